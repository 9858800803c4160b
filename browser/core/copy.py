"""Bulk writes with PostgreSQL's binary COPY (hundreds of times faster than ORM saves)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.db import connection


def copy_rows(table: str, columns: Sequence[str], types: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """COPY ``rows`` into ``table`` in binary format; returns the number of rows written.

    Runs inside the caller's transaction, so a failure part way leaves nothing behind.
    """
    count = 0
    column_list = ", ".join(f'"{name}"' for name in columns)
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f'COPY "{table}" ({column_list}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)
                count += 1
    return count
