"""Streaming encoders: each turns an iterator of export rows into an iterator of bytes, holding
at most one chunk of rows in memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from browser.exports.selectors import CHUNK, COLUMNS
from browser.exports.stream import Lookup, lines_data

FLUSH_BYTES = 64 * 1024


def _default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for row in rows:
        line = json.dumps(row, default=_default, ensure_ascii=False) + "\n"
        buffer.append(line)
        size += len(line)
        if size >= FLUSH_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _csv_value(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet would run it as a formula
    return "" if value is None else value


def csv_rows(rows: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out)
    names = [name for name, _, _ in COLUMNS]
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_value(row[name]) for name in names])
        if out.tell() >= FLUSH_BYTES:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


_ARROW = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string(), "float64": pa.float64(),
          "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"), "list<string>": pa.list_(pa.string()),
          "json": pa.string()}
SCHEMA = pa.schema([(name, _ARROW[kind]) for name, kind, _ in COLUMNS])


class _Drain(io.RawIOBase):
    """A write-only sink whose bytes are taken out after each row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    columns = {name: [row[name] for row in rows] for name, _, _ in COLUMNS}
    columns["scores"] = [json.dumps(s) for s in columns["scores"]]
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def parquet(rows: Iterable[dict[str, Any]], *, metadata: dict[str, str]) -> Iterator[bytes]:
    sink = _Drain()
    schema = SCHEMA.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK:
                writer.write_table(_table(batch))
                batch = []
                yield sink.take()
        if batch:
            writer.write_table(_table(batch))
    yield sink.take()


_TEXT_TAGS = pa.schema([("t", pa.string()), ("g", pa.list_(pa.string()))])


def parquet_from_batches(batches: Iterable[tuple[pa.RecordBatch, Lookup]], *, metadata: dict[str, str]) -> Iterator[bytes]:
    """Parquet from the columns PostgreSQL sends (``stream.label_batches``), a row group per batch:
    Arrow builds each column of a batch in one call, so no Python object is made per row."""
    sink = _Drain()
    schema = SCHEMA.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for batch, lookup in batches:
            writer.write_table(pa.Table.from_arrays(_columns(batch, lookup), schema=schema))
            yield sink.take()
    yield sink.take()


def _columns(batch: pa.RecordBatch, lookup: Lookup) -> list[pa.Array]:
    """The export's columns (``COLUMNS``' order) of a batch."""
    col = batch.column
    source = lookup.source_index(col("source_id"))
    src = {name: pc.take(values, source) for name, values in lookup.sources.items()}
    # text and tags come as JSON text (to_json, jsonb): one JSON parse of both columns decodes them
    objects = pc.binary_join_element_wise('{"t":', col("text"), ',"g":', col("tags"), "}\n", "")
    decoded = pa_json.read_json(pa.BufferReader(lines_data(objects)),
                                parse_options=pa_json.ParseOptions(explicit_schema=_TEXT_TAGS))
    n = batch.num_rows
    no_examples = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    return [col("id").cast(pa.int64()), pc.binary_join_element_wise(src["unit_prefix"], col("index"), ""),
            src["model"], src["source"], col("index").cast(pa.int32()), src["hook_point"], src["layer"], col("kind"),
            decoded.column("t").combine_chunks(), decoded.column("g").combine_chunks(),
            col("confidence").cast(pa.float64()), col("machine"),
            pc.take(lookup.authors, lookup.author_index(col("author_id"))),
            col("created").cast(_ARROW["timestamp"]), col("updated").cast(_ARROW["timestamp"]), col("revision").cast(pa.int32()),
            col("scores"), no_examples]
