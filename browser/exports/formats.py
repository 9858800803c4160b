"""Streaming encoders: each turns an iterator of export rows into an iterator of bytes, holding
at most one chunk of rows in memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from browser.exports.selectors import CHUNK, COLUMNS

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


# What ``lines.json_lines(for_arrow=True)`` writes: times as microseconds, scores as JSON text.
_LINE_SCHEMA = pa.schema([(name, pa.int64() if kind == "timestamp" else _ARROW[kind]) for name, kind, _ in COLUMNS])
ROW_GROUP_BYTES = 4 << 20  # about 8k rows of JSON per Parquet row group


def parquet_from_lines(blocks: Iterable[bytes], *, metadata: dict[str, str],
                       row_group_bytes: int = ROW_GROUP_BYTES) -> Iterator[bytes]:
    """Parquet from the JSON lines PostgreSQL writes (``lines.json_lines(for_arrow=True)``): each
    few MB of lines is parsed by Arrow in one call, so no Python object is made per row."""
    sink = _Drain()
    schema = SCHEMA.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    options = pa_json.ParseOptions(explicit_schema=_LINE_SCHEMA, unexpected_field_behavior="error")
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        pending: list[bytes] = []
        size = 0
        for block in blocks:
            pending.append(block)
            size += len(block)
            if size < row_group_bytes:
                continue
            # A row group is the fewest whole lines that reach ``row_group_bytes`` (a block holds
            # many lines, so one block may close several groups).
            data, start = b"".join(pending), 0
            while len(data) - start >= row_group_bytes and (end := data.find(b"\n", start + row_group_bytes - 1)) >= 0:
                writer.write_table(_lines_table(data[start:end + 1], options, schema))
                start = end + 1
                yield sink.take()
            pending, size = [data[start:]], len(data) - start
        if size:
            writer.write_table(_lines_table(b"".join(pending), options, schema))
    yield sink.take()


def _lines_table(data: bytes, options: pa_json.ParseOptions, schema: pa.Schema) -> pa.Table:
    table = pa_json.read_json(pa.BufferReader(data), parse_options=options)
    return table.select(schema.names).cast(schema)
