"""Streamed label exports: every format has the same rows, filters work, provenance is complete."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from browser.catalog.models import Model, Score, Unit
from browser.corpora.models import Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.labels.models import Label
from browser.labels.services import label_delete, label_save
from tests.conftest import Cast
from tests.harvesting import harvest_run


def _body(response: object) -> bytes:
    assert response.status_code == 200, getattr(response, "content", b"")  # type: ignore[attr-defined]
    return b"".join(response.streaming_content)  # type: ignore[attr-defined]


def _labels(cast: Cast, units: list[Unit]) -> None:
    label_save(unit=units[0], user=cast.owner, text='=cmd|" /C calc"!A0', tags=["formula"], confidence=0.5)
    label_save(unit=units[1], user=cast.owner, text="quotes, commas\nand newlines “unicode”")
    label_save(unit=units[1], user=cast.collaborator, text="<script>alert(1)</script>")
    Score.objects.create(unit=units[1], name="density", value=0.25)


def test_three_formats_agree(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    api = cast.client("anonymous")
    rows = [json.loads(line) for line in _body(api.get("/api/v1/exports/labels.jsonl")).decode().splitlines()]
    assert [r["unit"] for r in rows] == ["toyish/blocks.1.mlp.hook_post/0", "toyish/blocks.1.mlp.hook_post/1",
                                         "toyish/blocks.1.mlp.hook_post/1"]
    first = rows[0]
    assert first["hook_point"] == "blocks.1.mlp.hook_post" and first["source_type"] == "neurons"
    assert first["author"] == "owner" and first["revision"] == 1 and first["tags"] == ["formula"]
    assert rows[1]["scores"] == {"density": 0.25}
    table = pq.read_table(io.BytesIO(_body(api.get("/api/v1/exports/labels.parquet")))).to_pylist()
    assert [r["text"] for r in table] == [r["text"] for r in rows]
    assert [json.loads(r["scores"]) for r in table] == [r["scores"] for r in rows]
    text = _body(api.get("/api/v1/exports/labels.csv")).decode()
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["text"].startswith("'=")  # inert in a spreadsheet
    assert [r["text"] for r in parsed[1:]] == [r["text"] for r in rows[1:]]


def test_filters_and_incremental_sync(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    api = cast.client("anonymous")
    mine = _body(api.get("/api/v1/exports/labels.jsonl?author=collaborator")).decode().splitlines()
    assert len(mine) == 1 and json.loads(mine[0])["text"] == "<script>alert(1)</script>"
    since = timezone.now()
    assert _body(api.get("/api/v1/exports/labels.jsonl", {"updated_since": since.isoformat()})) == b""
    label = Label.objects.get(author=cast.collaborator)
    label_save(unit=label.unit, user=cast.collaborator, text="edited later")
    changed = _body(api.get("/api/v1/exports/labels.jsonl", {"updated_since": since.isoformat()})).decode()
    assert [json.loads(line)["text"] for line in changed.splitlines()] == ["edited later"]
    label_delete(label=Label.objects.get(author=cast.collaborator), user=cast.collaborator)
    deleted = api.get("/api/v1/exports/deleted/", {"updated_since": since.isoformat()}).json()["deleted"]
    assert [(d["label_id"], d["author"]) for d in deleted] == [(label.pk, "collaborator")]
    card = api.get("/api/v1/exports/card/?model=toyish").json()
    assert card["schema_version"] == 1 and card["rows"] == 2
    assert {c["name"] for c in card["columns"]} >= {"unit", "hook_point", "author", "revision", "scores"}
    assert api.get("/api/v1/exports/labels.jsonl?updated_since=soon").status_code == 400
    assert api.get("/api/v1/exports/labels.jsonl?top_examples=1000").status_code == 400
    assert api.get("/api/v1/exports/labels.xml").status_code == 404
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert _body(api.get("/api/v1/exports/labels.parquet", {"updated_since": future}))[:4] == b"PAR1"


def test_neuronpedia_and_neuron_record_shapes(cast: Cast, units: list[Unit]) -> None:
    _labels(cast, units)
    api = cast.client("anonymous")
    explanations = json.loads(_body(api.get("/api/v1/exports/neuronpedia.json")))
    assert explanations[0] | {"description": ""} == {
        "modelId": "toyish", "layer": "1-blocks.1.mlp.hook_post", "index": "0", "description": "",
        "explanationModelName": "", "typeName": "human", "authorUsername": "owner", "scores": []}
    record = api.get("/api/v1/exports/neuron-records/toyish/blocks.1.mlp.hook_post/1/").json()
    assert record["neuron_id"] == {"layer_index": 1, "neuron_index": 1}
    assert record["most_positive_activation_records"] == []  # not harvested yet
    assert api.get("/api/v1/exports/neuron-records/toyish/blocks.1.mlp.hook_post/99/").status_code == 404


@pytest.mark.slow
def test_exports_of_harvested_units_carry_their_contexts(cast: Cast, tiny: Model, corpus: Corpus) -> None:
    run = harvest_run(tiny, corpus, ["blocks.0.mlp.hook_post"])
    unit = Unit.objects.filter(stats_run=run, dead=False).order_by("index").first()
    assert unit is not None
    label_save(unit=unit, user=cast.owner, text="a harvested unit")
    api = cast.client("anonymous")
    row = json.loads(_body(api.get("/api/v1/exports/labels.jsonl?top_examples=2")))
    top = list(Example.objects.filter(unit=unit, run=run, kind=Example.Kind.TOP).order_by("rank")[:2])
    assert len(row["top_examples"]) == len(top) == 2
    first_words = decode_tokens(bytes(top[0].context.tokens))
    assert row["top_examples"][0].replace(" ", "") in "".join(
        tiny.tokenizer.tokens[t] for t in first_words).replace(" ", "")
    uid = f"tiny/blocks.0.mlp.hook_post/{unit.index}"
    record = api.get(f"/api/v1/exports/neuron-records/{uid}/").json()
    best = record["most_positive_activation_records"][0]
    assert len(best["tokens"]) == len(best["activations"])
    assert max(best["activations"]) == pytest.approx(top[0].max_value, rel=2e-3)
    assert record["max_activation"] == pytest.approx(unit.max_activation)
