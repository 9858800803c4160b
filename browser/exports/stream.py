"""Label-dataset rows as Arrow record batches: PostgreSQL sends each label's own columns, already
in the text the JSON export writes, as CSV through COPY; Arrow parses the stream a few MB at a time.

What it costs, measured (1M labels, ``bench export``): building each JSON line in SQL cost the
server about 10 us a label (a text concatenated from 30 pieces, then sorted and grouped into
blocks), the whole export's time. Here the server only scans, joins the scores, sorts on label id
and writes its output functions' text (``to_json(text)``, ``tags::text``, microseconds since the
epoch); what is the same for every label of a source or an author (model, source, hook point,
username) is fetched once and joined by Arrow, which also writes the lines
(``lines.json_lines``) and the Parquet columns (``formats.parquet_from_batches``).

The CSV uses a delimiter and a quote character that JSON text never holds raw (\\x02, \\x01:
control characters are escaped), so PostgreSQL quotes nothing and Arrow parses each block in one
pass; a raw column that did hold one (a unit kind) is still quoted, and parsed back, correctly.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from django.db import connection, transaction

from browser.labels.selectors import label_list

# CSV bytes Arrow parses per batch: about 12k labels, a Parquet row group. A row may not be longer
# (Arrow refuses one that straddles two blocks): a label's is at most about 20 KB (2,000 characters
# of text and 20 tags of 50, each character escaped at most to six bytes, and the unit's scores).
BLOCK_BYTES = 2 << 20
DELIMITER, QUOTE = "\x02", "\x01"
# The label-list query (its filters and joins) supplies these columns, under these names.
_FIELDS = {"id": "id", "unit_id": "unit_id", "unit__index": "index", "unit__source_id": "source_id",
           "unit__kind": "kind", "text": "text", "tags": "tags", "confidence": "confidence", "machine": "machine",
           "author_id": "author_id", "created": "created", "updated": "updated", "revision": "revision"}
_MICROS = "(extract(epoch FROM q.{0}) * 1000000)::int8 AS {0}"
# Scores are joined per unit and per label from two grouped scans of the score table (a hash join
# each), not looked up row by row: that lookup cost twice the rest of the query.
_SCORES = """CASE WHEN us.scores IS NULL AND ls.scores IS NULL THEN '{}'
                  ELSE (COALESCE(us.scores, '{}'::jsonb) || COALESCE(ls.scores, '{}'::jsonb))::text END AS scores"""
# (name, Arrow type) of each CSV column, in order. Label id, index and revision stay the server's
# text: the lines write it as is (no parse and print back); the Parquet columns cast it.
COLUMNS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()), ("source_id", pa.int64()), ("index", pa.string()), ("kind", pa.string()),
    ("text", pa.string()), ("tags", pa.string()), ("confidence", pa.string()), ("machine", pa.bool_()),
    ("author_id", pa.int64()), ("created", pa.int64()), ("updated", pa.int64()), ("revision", pa.string()),
    ("scores", pa.string()),
]
_SELECT = ("q.id, q.source_id, q.index, q.kind, to_json(q.text)::text AS text, q.tags::text AS tags, "
           f"q.confidence::text AS confidence, q.machine, q.author_id, {_MICROS.format('created')}, "
           f"{_MICROS.format('updated')}, q.revision, {_SCORES}")


def _copy_sql(sql: str) -> str:
    names = ", ".join(_FIELDS.values())
    return f"""COPY (SELECT {_SELECT}
        FROM ({sql}) q ({names})
        LEFT JOIN (SELECT unit_id, jsonb_object_agg(name, value) AS scores FROM catalog_score
                   WHERE label_id IS NULL GROUP BY unit_id) us ON us.unit_id = q.unit_id
        LEFT JOIN (SELECT label_id, jsonb_object_agg('label.' || name, value) AS scores FROM catalog_score
                   WHERE label_id IS NOT NULL GROUP BY label_id) ls ON ls.label_id = q.id
        ORDER BY q.id) TO STDOUT (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"""


class _CopyFile(io.RawIOBase):
    """The COPY's bytes as a file Arrow reads: ``read(n)`` joins COPY messages (one a label) up to n."""

    def __init__(self, copy: Any) -> None:
        self.copy = copy
        self.rest = b""

    def readable(self) -> bool:
        return True

    def peek(self) -> bytes:
        """The first message, kept for ``read``; empty when the COPY sent nothing."""
        if not self.rest:
            self.rest = bytes(self.copy.read())
        return self.rest

    def read(self, size: int = -1) -> bytes:
        parts, have = [self.rest], len(self.rest)
        while size < 0 or have < size:
            data = self.copy.read()
            if not data:
                break
            parts.append(data)
            have += len(data)
        data = b"".join(parts)
        if 0 <= size < len(data):
            data, self.rest = data[:size], data[size:]
        else:
            self.rest = b""
        return data


@dataclass
class Lookup:
    """What is the same for each label of a source (by source id) or of an author (by user id): raw
    values, Arrow arrays for Parquet, and ``to_json`` text (PostgreSQL's own escaping) for the lines."""

    source_ids: pa.Array
    sources: dict[str, pa.Array]  # unit_prefix, model, source, hook_point, layer
    sources_json: dict[str, list[str]]  # unit_prefix (without its closing quote), model, source, hook_point, layer
    author_ids: pa.Array
    authors: pa.Array
    authors_json: list[str]

    def source_index(self, ids: pa.Array) -> pa.Array:
        return self._index(ids, self.source_ids)

    def author_index(self, ids: pa.Array) -> pa.Array:
        return self._index(ids, self.author_ids)

    @staticmethod
    def _index(ids: pa.Array, known: pa.Array) -> pa.Array:
        at = pc.index_in(ids, value_set=known)
        if at.null_count:  # the lookup and the COPY read one snapshot (label_batches): never
            raise RuntimeError("a label's source or author is missing from the export's lookup")
        return at


_SOURCES = """SELECT s.id, m.name || '/' || s.name || '/', m.name, s.name, s.hook_point, s.layer,
                     left(to_json(m.name || '/' || s.name || '/')::text, -1), to_json(m.name)::text,
                     to_json(s.name)::text, to_json(s.hook_point)::text, s.layer::text
              FROM catalog_source s JOIN catalog_model m ON m.id = s.model_id ORDER BY s.id"""
_SOURCE_NAMES = ["unit_prefix", "model", "source", "hook_point", "layer"]


def _lookup(cursor: Any) -> Lookup:
    cursor.execute(_SOURCES)
    sources = list(zip(*cursor.fetchall(), strict=True)) or [()] * 11
    cursor.execute("SELECT id, username, to_json(username)::text FROM auth_user ORDER BY id")
    authors = list(zip(*cursor.fetchall(), strict=True)) or [()] * 3
    return Lookup(
        source_ids=pa.array(sources[0], pa.int64()),
        sources={name: pa.array(values, pa.int32() if name == "layer" else pa.string())
                 for name, values in zip(_SOURCE_NAMES, sources[1:6], strict=True)},
        sources_json={name: list(values) for name, values in zip(_SOURCE_NAMES, sources[6:], strict=True)},
        author_ids=pa.array(authors[0], pa.int64()), authors=pa.array(authors[1], pa.string()),
        authors_json=list(authors[2]))


def label_batches(*, filters: dict[str, Any], block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[pa.RecordBatch, Lookup]]:
    """The labels matching ``filters`` in label id order, about ``block_bytes`` of CSV a batch, each
    with the lookup of sources and authors, read in the same snapshot as the labels (one repeatable
    read transaction; inside a caller's transaction, that one)."""
    sql, params = label_list(**filters).order_by().values_list(*_FIELDS).query.sql_with_params()
    names = [name for name, _ in COLUMNS]
    read = pa_csv.ReadOptions(column_names=names, block_size=block_bytes)
    parse = pa_csv.ParseOptions(delimiter=DELIMITER, quote_char=QUOTE)
    # NULL is PostgreSQL's unquoted empty field, and only that (Arrow's defaults read "NaN" as null too)
    convert = pa_csv.ConvertOptions(column_types=dict(COLUMNS), true_values=["t"], false_values=["f"],
                                    null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False)
    own = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if own:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        lookup = _lookup(cursor)
        # JIT compiling this one long scan costs more than it saves (measured: 1.8 s against 1.6 s
        # for 100k rows).
        cursor.execute("SET LOCAL jit = off")
        with cursor.cursor.copy(_copy_sql(sql), params) as copy:
            source = _CopyFile(copy)
            if not source.peek():
                return  # no label: Arrow refuses an empty CSV
            reader = pa_csv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                if batch.num_rows:
                    yield batch, lookup


def lines_data(lines: pa.Array) -> bytes:
    """The values of a string array back to back (its data buffer between the first and last
    offsets): the text of lines that each end in a newline, without an object per line."""
    if not len(lines):
        return b""
    _, offsets, data = lines.buffers()
    ends = np.frombuffer(offsets, np.int32, count=lines.offset + len(lines) + 1)
    return data[int(ends[lines.offset]):int(ends[-1])].to_pybytes()
