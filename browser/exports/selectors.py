"""Label-dataset rows for the exports, read in chunks so memory stays flat in the row count."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from browser.catalog.models import Score
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.examples.selectors import vocab_for
from browser.labels.selectors import label_list

SCHEMA_VERSION = 1
CHUNK = 2000
COLUMNS: list[tuple[str, str, str]] = [
    # (name, parquet/arrow type, description)
    ("label_id", "int64", "the label's id in this browser"),
    ("unit", "string", "stable unit id model/source/index"),
    ("model", "string", "model name"),
    ("source", "string", "source name (a basis at one hook point)"),
    ("index", "int32", "neuron or feature index within the source"),
    ("hook_point", "string", "TransformerLens-style hook point, e.g. blocks.3.mlp.hook_post"),
    ("layer", "int32", "layer of the hook point"),
    ("source_type", "string", "neurons or sae"),
    ("text", "string", "the label, exactly as written"),
    ("tags", "list<string>", "the label's tags"),
    ("confidence", "float64", "the author's confidence in [0, 1], or null"),
    ("machine", "bool", "true when an explainer wrote it"),
    ("author", "string", "username of the label's author"),
    ("created", "timestamp", "when the label was first written (UTC)"),
    ("updated", "timestamp", "when it last changed (UTC)"),
    ("revision", "int32", "revision number, 1 for a label never edited"),
    ("scores", "json", "the unit's scores {name: value}, and the label's own under label.*"),
    ("top_examples", "list<string>", "texts of the unit's top contexts (only with top_examples=N)"),
]


def _scores(unit_ids: list[int], label_ids: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    out: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    rows = Score.objects.filter(unit_id__in=unit_ids).values_list("unit_id", "label_id", "name", "value")
    for unit_id, label_id, name, value in rows:
        if label_id is None:
            out[("unit", unit_id)][name] = value
        elif label_id in label_ids:
            out[("label", label_id)][f"label.{name}"] = value
    return out


def _top_texts(labels: list[Any], n: int) -> dict[int, list[str]]:
    """Texts of the top ``n`` contexts of each unit of this chunk, from its latest run."""
    runs = {label.unit_id: label.unit.stats_run_id for label in labels if label.unit.stats_run_id}
    if not runs or n <= 0:
        return {}
    examples = (Example.objects.filter(unit_id__in=list(runs), kind=Example.Kind.TOP, rank__lt=n)
                .values_list("unit_id", "run_id", "rank", "context__tokens").order_by("unit_id", "rank"))
    vocabs = {label.unit_id: vocab_for(label.unit.source.model) for label in labels}
    texts: dict[int, list[str]] = defaultdict(list)
    for unit_id, run_id, _, tokens in examples:
        if runs.get(unit_id) == run_id:
            vocab = vocabs[unit_id]
            ids = decode_tokens(bytes(tokens))
            texts[unit_id].append("".join(vocab.token(t) for t in ids if t not in vocab.special))
    return texts


def export_rows(*, filters: dict[str, Any], top_examples: int = 0) -> Iterator[dict[str, Any]]:
    """One dict per label, in label id order, read ``CHUNK`` labels at a time."""
    labels = label_list(**filters)
    last = 0
    while True:
        chunk = list(labels.filter(id__gt=last)[:CHUNK])
        if not chunk:
            return
        last = chunk[-1].pk
        scores = _scores([label.unit_id for label in chunk], [label.pk for label in chunk])
        texts = _top_texts(chunk, top_examples)
        for label in chunk:
            yield _row(label, scores, texts, top_examples)


def _row(label: Any, scores: dict[tuple[str, int], dict[str, float]], texts: dict[int, list[str]],
         top_examples: int) -> dict[str, Any]:
    unit, source = label.unit, label.unit.source
    return {
        "label_id": label.pk, "unit": f"{source.model.name}/{source.name}/{unit.index}",
        "model": source.model.name, "source": source.name, "index": unit.index,
        "hook_point": source.hook_point, "layer": source.layer, "source_type": source.kind,
        "text": label.text, "tags": list(label.tags), "confidence": label.confidence, "machine": label.machine,
        "author": label.author.username, "created": label.created, "updated": label.updated,
        "revision": label.revision,
        "scores": {**scores.get(("unit", unit.pk), {}), **scores.get(("label", label.pk), {})},
        "top_examples": texts.get(unit.pk, []) if top_examples else [],
    }


def dataset_card(*, filters: dict[str, Any], count: int) -> dict[str, Any]:
    return {
        "name": "neuron-browser labels",
        "schema_version": SCHEMA_VERSION,
        "rows": count,
        "filters": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in filters.items() if v is not None},
        "formats": ["jsonl", "csv", "parquet"],
        "columns": [{"name": n, "type": t, "description": d} for n, t, d in COLUMNS],
        "incremental_sync": "pass updated_since=<the 'updated' of the newest row you hold> to fetch only changes; "
                            "deleted labels are listed by /api/v1/exports/deleted/",
        "stable_ids": "unit ids are model/source/index; label ids never change",
    }
