"""The JSONL export's lines, written by Arrow from the columns PostgreSQL sends (``stream``).

Each line is byte for byte what ``json_build_object`` wrote when the server built the lines
(``{"key" : value, ...}``, each value through the output function it used: ``to_json`` for
strings, float8 and int text, jsonb text for tags and scores, six-digit UTC times);
``tests/labels/test_export_reference.py`` checks it against a hand-built reference and
``tests/labels/test_export_sql_lines.py`` against the SQL-built lines it replaced. A batch's lines
are one Arrow string array, each value ending in a newline, so the batch's JSONL is that array's
data buffer: no Python object per line.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from browser.exports.stream import BLOCK_BYTES, Lookup, label_batches, lines_data

# float8out's words for the values JSON has no number for; to_json quoted them.
_NOT_NUMBERS = pa.array(["NaN", "Infinity", "-Infinity"])
_DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1).toordinal()


def json_lines(*, filters: dict[str, Any], block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The export's rows as JSON lines, in label id order, a block of whole lines per ``block_bytes``
    of the server's CSV (more than the longest label's row: ``stream.BLOCK_BYTES``)."""
    for batch, lookup in label_batches(filters=filters, block_bytes=block_bytes):
        yield lines_data(_lines(batch, lookup))


def _pairs(first: np.ndarray, second: np.ndarray, text: Any) -> pa.Array:
    """``text(a, b)`` for each row's (a, b), computed once per distinct pair in the batch."""
    width = int(second.max()) + 1
    unique, at = np.unique(first.astype(np.int64) * width + second, return_inverse=True)
    return pc.take(pa.array([text(int(k) // width, int(k) % width) for k in unique], pa.string()), pa.array(at))


@functools.cache
def _clock() -> pa.Array:
    """``HH:MM:SS.`` of each second of a day: the time of day is a lookup, not a format, per row."""
    second = np.arange(86_400)
    hour, minute, sec = (pc.utf8_slice_codeunits(pa.array(part + 100).cast(pa.string()), 1)  # two digits
                         for part in (second // 3600, second // 60 % 60, second % 60))
    return pc.binary_join_element_wise(hour, ":", minute, ":", sec, ".", "")


def _iso(micros: pa.Array) -> list[pa.Array]:
    """``YYYY-MM-DDTHH:MM:SS.ffffff`` (to_char's six digits) of microseconds since the epoch, in
    three pieces: the day (formatted once per distinct day), the second of the day, the microseconds."""
    day, of_day = np.divmod(micros.to_numpy(), _DAY_US)
    days, day_at = np.unique(day, return_inverse=True)
    day_text = pa.array([date.fromordinal(_EPOCH + int(d)).isoformat() + "T" for d in days])
    fraction = pc.utf8_slice_codeunits(pa.array(of_day % 1_000_000 + 1_000_000).cast(pa.string()), 1)
    return [pc.take(day_text, pa.array(day_at)), pc.take(_clock(), pa.array(of_day // 1_000_000)), fraction]


def _confidence(text: pa.Array) -> pa.Array:
    quoted = pc.binary_join_element_wise('"', text, '"', "")
    return pc.fill_null(pc.if_else(pc.is_in(text, value_set=_NOT_NUMBERS), quoted, text), "null")


def _lines(batch: pa.RecordBatch, lookup: Lookup) -> pa.Array:
    """The batch's lines, from as few pieces as the columns allow (Arrow's join costs per piece):
    what a source and unit kind fix, and what machine and author fix, come as one piece each."""
    col = batch.column
    source = lookup.source_index(col("source_id")).to_numpy()
    kinds = col("kind").dictionary_encode()
    kind_json = [json.dumps(k, ensure_ascii=False) for k in kinds.dictionary.to_pylist()]
    kind = kinds.indices.to_numpy()
    src = lookup.sources_json
    unit = pc.take(pa.array([', "unit" : ' + u for u in src["unit_prefix"]], pa.string()), pa.array(source))
    names = pc.take(pa.array([f'", "model" : {m}, "source" : {s}, "index" : '
                              for m, s in zip(src["model"], src["source"], strict=True)], pa.string()),
                    pa.array(source))
    place = _pairs(source, kind, lambda s, k: f', "hook_point" : {src["hook_point"][s]}, "layer" : '
                                              f'{src["layer"][s]}, "source_type" : {kind_json[k]}, "text" : ')
    by = _pairs(col("machine").to_numpy(zero_copy_only=False).astype(np.int64),
                lookup.author_index(col("author_id")).to_numpy(),
                lambda m, a: f', "machine" : {"true" if m else "false"}, "author" : {lookup.authors_json[a]}, '
                             '"created" : "')
    index = col("index")
    return pc.binary_join_element_wise(
        '{"label_id" : ', col("id"), unit, index, names, index, place, col("text"),
        ', "tags" : ', col("tags"), ', "confidence" : ', _confidence(col("confidence")), by, *_iso(col("created")),
        '+00:00", "updated" : "', *_iso(col("updated")), '+00:00", "revision" : ', col("revision"),
        ', "scores" : ', col("scores"), ', "top_examples" : []}\n', "")
