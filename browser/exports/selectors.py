"""Label-dataset rows for the exports, read in chunks so memory stays flat in the row count."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from django.db import connection

from browser.catalog.models import Model, Score
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.examples.selectors import vocab_for
from browser.labels.selectors import label_list

SCHEMA_VERSION = 1
CHUNK = 5000
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


def _scores(unit_ids: list[int], label_ids: set[int]) -> dict[tuple[str, int], dict[str, float]]:
    out: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    with connection.cursor() as cursor:  # = ANY(array): one parameter, not thousands to plan
        cursor.execute(f"SELECT unit_id, label_id, name, value FROM {Score._meta.db_table} WHERE unit_id = ANY(%s)",
                       [unit_ids])
        rows = cursor.fetchall()
    for unit_id, label_id, name, value in rows:
        if label_id is None:
            out[("unit", unit_id)][name] = value
        elif label_id in label_ids:
            out[("label", label_id)][f"label.{name}"] = value
    return out


FIELDS = ["id", "unit_id", "unit__index", "unit__source__name", "unit__source__model__name",
          "unit__source__model_id", "unit__source__hook_point", "unit__source__layer", "unit__kind", "text", "tags",
          "confidence", "machine", "author__username", "created", "updated", "revision", "unit__stats_run_id"]


def _top_texts(rows: list[tuple[Any, ...]], n: int) -> dict[int, list[str]]:
    """Texts of the top ``n`` contexts of each unit of this chunk, from its latest run."""
    runs = {row[1]: row[17] for row in rows if row[17]}
    if not runs or n <= 0:
        return {}
    examples = (Example.objects.filter(unit_id__in=list(runs), kind=Example.Kind.TOP, rank__lt=n)
                .values_list("unit_id", "run_id", "rank", "context__tokens").order_by("unit_id", "rank"))
    models = {row[1]: row[5] for row in rows}
    vocabs = {model_id: vocab_for(Model.objects.get(pk=model_id)) for model_id in set(models.values())}
    texts: dict[int, list[str]] = defaultdict(list)
    for unit_id, run_id, _, tokens in examples:
        if runs.get(unit_id) == run_id:
            vocab = vocabs[models[unit_id]]
            ids = decode_tokens(bytes(tokens))
            texts[unit_id].append("".join(vocab.token(t) for t in ids if t not in vocab.special))
    return texts


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def export_rows(*, filters: dict[str, Any], top_examples: int = 0) -> Iterator[dict[str, Any]]:
    """One dict per label, in label id order. One query read through a server-side cursor,
    ``CHUNK`` rows at a time (plain tuples, no model instances: the export is bound by per-row
    Python work); scores and example texts are fetched per chunk."""
    labels = label_list(**filters).values_list(*FIELDS)
    for chunk in _chunks(labels.iterator(chunk_size=CHUNK), CHUNK):
        scores = _scores([row[1] for row in chunk], {row[0] for row in chunk})
        texts = _top_texts(chunk, top_examples)
        for row in chunk:
            yield _row(row, scores, texts, top_examples)


def _row(row: tuple[Any, ...], scores: dict[tuple[str, int], dict[str, float]], texts: dict[int, list[str]],
         top_examples: int) -> dict[str, Any]:
    (label_id, unit_id, index, source, model, _, hook_point, layer, kind, text, tags, confidence, machine, author,
     created, updated, revision, _) = row
    return {
        "label_id": label_id, "unit": f"{model}/{source}/{index}", "model": model, "source": source,
        "index": index, "hook_point": hook_point, "layer": layer, "source_type": kind, "text": text,
        "tags": tags, "confidence": confidence, "machine": machine, "author": author, "created": created,
        "updated": updated, "revision": revision,
        "scores": {**scores.get(("unit", unit_id), {}), **scores.get(("label", label_id), {})},
        "top_examples": texts.get(unit_id, []) if top_examples else [],
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
