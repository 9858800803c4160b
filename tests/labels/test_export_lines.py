"""Exports from PostgreSQL's columns (COPY of CSV, lines and Parquet columns by Arrow) hold exactly the rows
the Python path builds."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq

from browser.catalog.models import Score, Unit
from browser.exports import formats
from browser.exports.lines import json_lines
from browser.exports.selectors import export_rows
from browser.exports.stream import label_batches
from browser.labels.models import Label
from browser.labels.services import label_save
from tests.conftest import Cast

HOSTILE = 'quotes " and \\ backslashes, tab\t, bell\x07, \x01\x02 separators, newline\n, “unicode” ☃ 𝔘'


def _labels(cast: Cast, units: list[Unit]) -> None:
    label_save(unit=units[0], user=cast.owner, text=HOSTILE, tags=["a,b", 'q"'], confidence=0.25)
    label_save(unit=units[1], user=cast.owner, text="plain")
    label_save(unit=units[1], user=cast.collaborator, text="=1+1", tags=[])
    Score.objects.create(unit=units[1], name="density", value=0.125)
    Score.objects.create(unit=units[1], name="top_token_concentration", value=1 / 3)
    mine = Label.objects.get(unit=units[1], author=cast.collaborator)
    Score.objects.create(unit=units[1], name="auc", value=0.75, label=mine)


def _python_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for chunk in formats.jsonl(export_rows(filters={})) for line in
            chunk.decode().splitlines()]


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    """Times compared as instants (PostgreSQL always writes six digits of microseconds)."""
    return {**row, "created": datetime.fromisoformat(row["created"]),
            "updated": datetime.fromisoformat(row["updated"])}


def test_sql_lines_equal_the_python_rows(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    lines = b"".join(json_lines(filters={})).decode().splitlines()
    assert len(lines) == 3
    assert [_normal(json.loads(line)) for line in lines] == [_normal(r) for r in _python_rows()]
    assert json.loads(lines[0])["text"] == HOSTILE
    assert json.loads(lines[2])["scores"] == {"density": 0.125, "top_token_concentration": 1 / 3, "label.auc": 0.75}


def test_filters_apply_to_sql_lines(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    lines = b"".join(json_lines(filters={"author": "collaborator"})).decode().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["=1+1"]
    assert b"".join(json_lines(filters={"author": "nobody"})) == b""


def test_parquet_from_sql_columns_equals_parquet_from_python_rows(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    fast = pq.read_table(io.BytesIO(b"".join(formats.parquet_from_batches(
        label_batches(filters={}), metadata={"k": "v"}))))
    slow = pq.read_table(io.BytesIO(b"".join(formats.parquet(export_rows(filters={}), metadata={"k": "v"}))))
    assert fast.schema == slow.schema
    fast_rows, slow_rows = fast.to_pylist(), slow.to_pylist()
    for row in fast_rows + slow_rows:
        row["scores"] = json.loads(row["scores"])
    assert fast_rows == slow_rows
    assert fast.schema.metadata[b"k"] == b"v"


def test_parquet_row_groups_are_the_batches(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    batches = list(label_batches(filters={}, block_bytes=256))  # a row group per label or two (rows are ~100-200 B)
    data = b"".join(formats.parquet_from_batches(batches, metadata={}))
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == len(batches) >= 2
    assert pq.read_table(io.BytesIO(data)).column("text").to_pylist() == [HOSTILE, "plain", "=1+1"]
