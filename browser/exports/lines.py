"""Label-dataset rows built by PostgreSQL itself: one JSON object per label, streamed with COPY.

The Python path (``selectors.export_rows``) spends its time building a dict per row; here the
server writes each row's JSON text and the client only moves bytes. It serves every export
without example texts.

What it costs, measured (1M labels, ``bench export``): building the lines with
``json_build_object`` cost 40% more server time than concatenating the same text (it looks up
each argument's type on every row), and a COPY message per row cost the client about 6 us a row
in psycopg alone, as much as the server's work. So each line is concatenated by hand, byte for
byte what ``json_build_object`` wrote (``{"key" : value, ...}``, values through the same output
functions; ``tests/labels/test_export_lines.py`` checks both against a hand-built reference), and
the server joins ``BLOCK`` consecutive lines (by label id) into one binary COPY row: one message per
thousand labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db import connection

from browser.labels.selectors import label_list

BLOCK = 1000  # labels per COPY message (ids id // BLOCK share one; a sparse filter gives fewer)
# The label-list query (its filters and joins) supplies these columns, under these names.
_FIELDS = {"id": "id", "unit_id": "unit_id", "unit__index": "index", "unit__source_id": "source_id",
           "unit__kind": "kind", "text": "text", "tags": "tags", "confidence": "confidence", "machine": "machine",
           "author_id": "author_id", "created": "created", "updated": "updated", "revision": "revision"}
_ISO = """'"' || to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') || '"'"""
_MICROS = "(extract(epoch FROM {}) * 1000000)::int8::text"
# Scores are joined per unit and per label from two grouped scans of the score table (a hash join
# each), not looked up row by row: that lookup cost twice the rest of the query.
_SCORES = """CASE WHEN us.scores IS NULL AND ls.scores IS NULL THEN '{}'
                  ELSE (COALESCE(us.scores, '{}'::jsonb) || COALESCE(ls.scores, '{}'::jsonb))::text END"""
# What is the same for every unit of a source, escaped once per source instead of once per row:
# the start of "unit" (model/source/, the index follows unescaped: digits need no escape) and the
# run from "model" to "hook_point" and from "layer" to "source_type".
_SOURCES = """SELECT s.id, left(to_json(m.name || '/' || s.name || '/')::text, -1) AS unit,
                     '", "model" : ' || to_json(m.name)::text || ', "source" : ' || to_json(s.name)::text
                         || ', "index" : ' AS model,
                     ', "hook_point" : ' || to_json(s.hook_point)::text || ', "layer" : ' || s.layer
                         || ', "source_type" : ' AS hook
              FROM catalog_source s JOIN catalog_model m ON m.id = s.model_id"""


def _line(*, for_arrow: bool) -> str:
    """One label's JSON text: the keys, order and separators ``json_build_object`` writes
    (``{"key" : value, ...}``), each value through the output function it used."""
    created, updated = ((_MICROS if for_arrow else _ISO).format(f"q.{c}") for c in ("created", "updated"))
    scores = f"to_json({_SCORES})::text" if for_arrow else _SCORES
    return f"""'{{"label_id" : ' || q.id || ', "unit" : ' || src.unit || q.index || src.model || q.index
        || src.hook || to_json(q.kind)::text || ', "text" : ' || to_json(q.text)::text
        || ', "tags" : ' || COALESCE(q.tags::text, 'null')
        || ', "confidence" : ' || COALESCE(to_json(q.confidence)::text, 'null')
        || ', "machine" : ' || q.machine::text || ', "author" : ' || au.author
        || ', "created" : ' || {created} || ', "updated" : ' || {updated} || ', "revision" : ' || q.revision
        || ', "scores" : ' || {scores} || ', "top_examples" : []}}'"""


def _select(sql: str, *, for_arrow: bool) -> str:
    """``OFFSET 0`` keeps the lines in a subquery of their own, so parallel workers build them; flattened,
    the planner built every line in the aggregate, in one process: 10% slower wall here at load 18
    (1M labels, two runs each); on idle cores, with a core per worker, likely more (not measured)."""
    names = ", ".join(_FIELDS.values())
    return f"""
        SELECT convert_to(string_agg(t.line, E'\\n' ORDER BY t.id) || E'\\n', 'UTF8')
        FROM (SELECT q.id, {_line(for_arrow=for_arrow)} AS line
        FROM ({sql}) q ({names})
        JOIN ({_SOURCES}) src ON src.id = q.source_id
        JOIN (SELECT id, to_json(username)::text AS author FROM auth_user) au ON au.id = q.author_id
        LEFT JOIN (SELECT unit_id, jsonb_object_agg(name, value) AS scores FROM catalog_score
                   WHERE label_id IS NULL GROUP BY unit_id) us ON us.unit_id = q.unit_id
        LEFT JOIN (SELECT label_id, jsonb_object_agg('label.' || name, value) AS scores FROM catalog_score
                   WHERE label_id IS NOT NULL GROUP BY label_id) ls ON ls.label_id = q.id
        OFFSET 0) t
        GROUP BY t.id / {BLOCK}
        ORDER BY t.id / {BLOCK}"""


def json_lines(*, filters: dict[str, Any], for_arrow: bool = False) -> Iterator[bytes]:
    """The export's rows as JSON lines, in label id order, in blocks of up to ``BLOCK`` whole lines.

    ``for_arrow``: times as microseconds since the epoch and scores as a JSON string, the shapes
    the Parquet schema reads without a per-row conversion.
    """
    sql, params = label_list(**filters).order_by().values_list(*_FIELDS).query.sql_with_params()
    with connection.cursor() as cursor:
        # JIT compiling this one long scan costs more than it saves (measured: 1.8 s against 1.6 s
        # for 100k rows).
        cursor.execute("SET jit = off")
        try:
            with cursor.cursor.copy(f"COPY ({_select(sql, for_arrow=for_arrow)}) TO STDOUT (FORMAT binary)",
                                    params) as copy:
                copy.set_types(["bytea"])
                for (block,) in copy.rows():
                    yield bytes(block)
        finally:
            cursor.execute("RESET jit")
