"""The streamed JSONL export, byte for byte, against lines written here by hand from the rows: the
key order and ``" : "`` separators of ``json_build_object``, PostgreSQL's string escapes, jsonb's
key order for scores, six-digit UTC times; and it stays whole across COPY blocks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from browser.catalog.models import Score, Unit
from browser.exports.lines import json_lines
from browser.labels.models import Label
from browser.labels.services import label_save
from tests.conftest import Cast

HOSTILE = 'quotes " and \\ backslashes, tab\t, bell\x07, \x01\x02 separators, newline\n, “unicode” ☃ 𝔘'


def _labels(cast: Cast, units: list[Unit]) -> None:
    label_save(unit=units[0], user=cast.owner, text=HOSTILE, tags=["a,b", 'q"'], confidence=0.25)
    label_save(unit=units[1], user=cast.owner, text="plain")
    label_save(unit=units[1], user=cast.collaborator, text="=1+1", tags=[], confidence=1.0)
    label_save(unit=units[2], user=cast.collaborator, text="x" * 2000, machine=True)
    Score.objects.create(unit=units[1], name="top_token_concentration", value=1 / 3)
    Score.objects.create(unit=units[1], name="density", value=0.125)
    mine = Label.objects.get(unit=units[1], author=cast.collaborator)
    Score.objects.create(unit=units[1], name="auc", value=0.75, label=mine)


def _string(text: str) -> str:
    """PostgreSQL's JSON string: ", \\ and control characters escaped, the rest as is."""
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    """PostgreSQL's float8 text: the shortest exact digits, and no ".0" on a whole number."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def _time(value: datetime) -> str:
    return '"' + value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + '+00:00"'


def _scores(label: Label) -> str:
    values: dict[str, Any] = {s.name: s.value for s in Score.objects.filter(unit=label.unit, label=None)}
    values.update({f"label.{s.name}": s.value for s in Score.objects.filter(label=label)})
    ordered = sorted(values, key=lambda k: (len(k.encode()), k.encode()))  # jsonb's key order
    return json.dumps({k: values[k] for k in ordered})


def _reference() -> bytes:
    out = []
    for label in Label.objects.select_related("unit__source__model", "author").order_by("id"):
        unit, source = label.unit, label.unit.source
        fields = [
            ("label_id", str(label.pk)), ("unit", _string(f"{source.model.name}/{source.name}/{unit.index}")),
            ("model", _string(source.model.name)), ("source", _string(source.name)), ("index", str(unit.index)),
            ("hook_point", _string(source.hook_point)), ("layer", str(source.layer)),
            ("source_type", _string(unit.kind)), ("text", _string(label.text)),
            ("tags", json.dumps(label.tags, ensure_ascii=False)),
            ("confidence", "null" if label.confidence is None else _number(label.confidence)),
            ("machine", "true" if label.machine else "false"), ("author", _string(label.author.username)),
            ("created", _time(label.created)), ("updated", _time(label.updated)),
            ("revision", str(label.revision)), ("scores", _scores(label)), ("top_examples", "[]"),
        ]
        out.append("{" + ", ".join(f'"{k}" : {v}' for k, v in fields) + "}\n")
    return "".join(out).encode()


def test_streamed_jsonl_equals_the_hand_built_lines(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    expected = _reference()
    assert expected.count(b"\n") == 4 and "“unicode” ☃ 𝔘".encode() in expected
    assert b"".join(json_lines(filters={})) == expected
    response = cast.client("anonymous").get("/api/v1/exports/labels.jsonl")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == expected


@pytest.mark.parametrize("block_bytes", [2500, 2 << 20])
def test_lines_stay_whole_and_in_order_across_blocks(cast: Cast, units: list[Unit], block_bytes: int) -> None:
    _labels(cast, units)
    blocks = list(json_lines(filters={}, block_bytes=block_bytes))
    assert all(b.endswith(b"\n") for b in blocks)
    assert len(blocks) == (2 if block_bytes == 2500 else 1)  # the server's CSV is ~2.7 KB: the long label's ~2 KB
    assert b"".join(blocks) == _reference()
