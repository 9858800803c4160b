"""Exports in peers' formats: Neuronpedia explanations and OpenAI neuron-explainer NeuronRecords."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from browser.catalog.models import Unit
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.examples.selectors import Vocab, unit_stats, vocab_for
from browser.labels.selectors import label_list


def neuronpedia_explanations(*, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Neuronpedia's explanation-export shape: one object per label."""
    for label in label_list(**filters).iterator(chunk_size=2000):
        source = label.unit.source
        yield {
            "modelId": source.model.name,
            "layer": f"{source.layer}-{source.name}",
            "index": str(label.unit.index),
            "description": label.text,
            "explanationModelName": "offline-explainer" if label.machine else "",
            "typeName": "machine" if label.machine else "human",
            "authorUsername": label.author.username,
            "scores": [],
        }


def _record(example: Example, context_tokens: bytes | memoryview, vocab: Vocab) -> dict[str, Any]:
    ids = decode_tokens(bytes(context_tokens))
    values = np.frombuffer(bytes(example.values), dtype="<f2").astype(np.float32)[: len(ids)]
    return {"tokens": [vocab.token(t) for t in ids], "activations": [round(float(v), 4) for v in values]}


def neuron_record(unit: Unit) -> dict[str, Any]:
    """The unit as an OpenAI neuron-explainer ``NeuronRecord`` (top and per-quantile samples)."""
    stats = unit_stats(unit)
    vocab = vocab_for(unit.source.model)
    examples = list(Example.objects.filter(unit=unit, run_id=unit.stats_run_id).select_related("context")
                    .order_by("kind", "bucket", "rank")) if unit.stats_run_id else []
    records = [(e, _record(e, e.context.tokens, vocab)) for e in examples]
    buckets = sorted({e.bucket for e, _ in records if e.kind == Example.Kind.INTERVAL})
    return {
        "neuron_id": {"layer_index": unit.layer, "neuron_index": unit.index},
        "most_positive_activation_records": [r for e, r in records if e.kind == Example.Kind.TOP],
        "most_negative_activation_records": [],
        "random_sample": [r for e, r in records if e.kind == Example.Kind.RANDOM],
        "random_sample_by_quantile": [[r for e, r in records if e.kind == Example.Kind.INTERVAL and e.bucket == b]
                                      for b in buckets],
        "quantile_boundaries": buckets,
        "mean": stats.mean if stats else None,
        "stdev": None,
        "max_activation": stats.max if stats else None,
    }
