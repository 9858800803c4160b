"""The JSONL export written by Arrow from PostgreSQL's columns equals, byte for byte, the lines that
PostgreSQL itself built before (the SQL kept here as the reference: each line concatenated from
``to_json``/``to_char``/jsonb text, grouped into COPY blocks), on labels with hostile text, two
sources of two kinds, two authors, scores on units and labels, a missing, a NaN and an infinite
confidence, and times before the epoch, on a whole second and with one microsecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from django.db import connection

from browser.catalog.models import Score, Source, Unit
from browser.catalog.services import source_get_or_create, units_ensure
from browser.exports.lines import json_lines
from browser.labels.models import Label
from browser.labels.selectors import label_list
from browser.labels.services import label_save
from tests.conftest import Cast

HOSTILE = 'quotes " and \\ backslashes, tab\t, bell\x07, \x01\x02 separators, newline\n, “unicode” ☃ 𝔘 \x7f'
_FIELDS = ["id", "unit_id", "unit__index", "unit__source_id", "unit__kind", "text", "tags", "confidence", "machine",
           "author_id", "created", "updated", "revision"]
_ISO = """'"' || to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') || '"'"""
# The server-built line of the export before it moved to Arrow (browser/exports/lines.py at 9d4e433).
_OLD = """
    SELECT string_agg('{{"label_id" : ' || q.id || ', "unit" : ' || src.unit || q.index || src.model || q.index
        || src.hook || to_json(q.kind)::text || ', "text" : ' || to_json(q.text)::text
        || ', "tags" : ' || COALESCE(q.tags::text, 'null')
        || ', "confidence" : ' || COALESCE(to_json(q.confidence)::text, 'null')
        || ', "machine" : ' || q.machine::text || ', "author" : ' || au.author
        || ', "created" : ' || {created} || ', "updated" : ' || {updated} || ', "revision" : ' || q.revision
        || ', "scores" : ' || CASE WHEN us.scores IS NULL AND ls.scores IS NULL THEN '{{}}'
                  ELSE (COALESCE(us.scores, '{{}}'::jsonb) || COALESCE(ls.scores, '{{}}'::jsonb))::text END
        || ', "top_examples" : []}}', E'\\n' ORDER BY q.id) || E'\\n'
    FROM ({sql}) q (id, unit_id, index, source_id, kind, text, tags, confidence, machine, author_id, created,
                    updated, revision)
    JOIN (SELECT s.id, left(to_json(m.name || '/' || s.name || '/')::text, -1) AS unit,
                 '", "model" : ' || to_json(m.name)::text || ', "source" : ' || to_json(s.name)::text
                     || ', "index" : ' AS model,
                 ', "hook_point" : ' || to_json(s.hook_point)::text || ', "layer" : ' || s.layer
                     || ', "source_type" : ' AS hook
          FROM catalog_source s JOIN catalog_model m ON m.id = s.model_id) src ON src.id = q.source_id
    JOIN (SELECT id, to_json(username)::text AS author FROM auth_user) au ON au.id = q.author_id
    LEFT JOIN (SELECT unit_id, jsonb_object_agg(name, value) AS scores FROM catalog_score
               WHERE label_id IS NULL GROUP BY unit_id) us ON us.unit_id = q.unit_id
    LEFT JOIN (SELECT label_id, jsonb_object_agg('label.' || name, value) AS scores FROM catalog_score
               WHERE label_id IS NOT NULL GROUP BY label_id) ls ON ls.label_id = q.id"""


def _old_lines(**filters: object) -> bytes:
    sql, params = label_list(**filters).order_by().values_list(*_FIELDS).query.sql_with_params()  # type: ignore[arg-type]
    with connection.cursor() as cursor:
        cursor.execute(_OLD.format(sql=sql, created=_ISO.format("q.created"), updated=_ISO.format("q.updated")),
                       params)
        text = cursor.fetchone()[0]
    return (text or "").encode()


def _labels(cast: Cast, units: list[Unit]) -> None:
    sae = source_get_or_create(model=units[0].source.model, name="sae.blocks.1 \"wide\"", hook_point="blocks.1.hook",
                               layer=1, kind=Source.Kind.SAE, n_units=3)
    units_ensure(source=sae)
    features = list(Unit.objects.filter(source=sae).order_by("index"))
    label_save(unit=units[0], user=cast.owner, text=HOSTILE, tags=["a,b", 'q"', "\x01"], confidence=0.25)
    label_save(unit=features[2], user=cast.owner, text="a feature", confidence=1e-05)
    label_save(unit=units[1], user=cast.collaborator, text="=1+1", tags=[], confidence=1.0, machine=True)
    label_save(unit=features[0], user=cast.collaborator, text="x" * 2000)
    label_save(unit=units[3], user=cast.collaborator, text="not a number")
    label_save(unit=units[4], user=cast.owner, text="infinite")
    Score.objects.create(unit=units[1], name="top_token_concentration", value=1 / 3)
    Score.objects.create(unit=features[0], name="density", value=0.125)
    Score.objects.create(unit=units[1], name="auc", value=0.75, label=Label.objects.get(unit=units[1]))
    Label.objects.filter(unit=units[3]).update(confidence=float("nan"))
    Label.objects.filter(unit=units[4]).update(confidence=float("-inf"))
    times = [datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC), datetime(2000, 2, 29, 12, 0, tzinfo=UTC),
             datetime(2026, 3, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5)))]
    for label, when in zip(Label.objects.order_by("id"), times, strict=False):
        Label.objects.filter(pk=label.pk).update(created=when, updated=when + timedelta(microseconds=999_999))


def test_arrow_lines_equal_the_sql_built_lines(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    old = _old_lines()
    assert old.count(b"\n") == 6 and b'"NaN"' in old and b'"-Infinity"' in old and b"1969-12-31T23:59:59.5" in old
    assert b"".join(json_lines(filters={})) == old
    for block_bytes in (2200, 4096):  # the 2,000-character label's row is about 2 KB
        assert b"".join(json_lines(filters={}, block_bytes=block_bytes)) == old


def test_filtered_arrow_lines_equal_the_sql_built_lines(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    for filters in ({"author": "collaborator"}, {"source": "sae.blocks.1 \"wide\""}, {"machine": True},
                    {"units": [units[0].pk, units[4].pk]}, {"author": "nobody"}):
        assert b"".join(json_lines(filters=filters)) == _old_lines(**filters), filters
