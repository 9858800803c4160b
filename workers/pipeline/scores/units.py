"""Per-unit scores: density, top-token concentration, context clusters (MiniLM windows), and a toy
model's features per neuron from its true dictionary."""


from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch

from browser.catalog.models import Model, Source
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.compute import scores
from workers.compute.cluster_batch import context_cluster_polysemanticity_many
from workers.pipeline.scores.common import (
    CLUSTER_INTERVAL,
    CLUSTER_TOP,
    CLUSTERS,
    CONCENTRATION,
    DENSITY,
    FEATURES_PER_NEURON,
    MIN_CLUSTER_EXAMPLES,
    SourceScores,
    UnitExamples,
    context_tokens,
)
from workers.pipeline.scores.windows import Windows


def _unit_scores(run: Run, result: SourceScores, examples: UnitExamples, windows: Windows) -> None:
    source = result.source
    for pk_index, density, fire in _density_rows(run, result):
        result.rows.append((pk_index, DENSITY, density, {"fire_count": fire}))
    wanted = {c for unit in examples.by_unit.values() for k, c, _ in unit if k == Example.Kind.TOP}
    if run.model.kind != Model.Kind.TOY:
        wanted |= {c for u in examples.by_unit for c in _cluster_examples(examples, u)[0]}
    tokens = context_tokens(wanted)
    vocab: list[str] = run.corpus.tokenizer.tokens
    for unit, entries in examples.by_unit.items():
        top = [vocab[tokens[c][p]] for k, c, p in entries if k == Example.Kind.TOP]
        share, token = scores.top_token_concentration(top, normalize=True)
        if top:
            result.rows.append((unit, CONCENTRATION, share, {"token": token, "examples": len(top)}))
    if run.model.kind != Model.Kind.TOY:
        start = time.perf_counter()
        _cluster_scores(run, source, result, examples, tokens, windows)
        windows.seconds += time.perf_counter() - start


def _density_rows(run: Run, result: SourceScores) -> Iterator[tuple[int, float, int]]:
    index = {pk: i for i, pk in result.units.items()}
    for unit_id, density, fire in UnitStats.objects.filter(run=run, unit_id__in=list(index)).values_list(
            "unit_id", "density", "fire_count"):
        yield index[unit_id], density, fire


def _cluster_examples(examples: UnitExamples, unit: int) -> tuple[list[int], list[int]]:
    """(context ids, max positions) of the unit's embedded examples: top, then interval."""
    entries = examples.by_unit.get(unit, [])
    top = [(c, p) for k, c, p in entries if k == Example.Kind.TOP][:CLUSTER_TOP]
    interval = [(c, p) for k, c, p in entries if k == Example.Kind.INTERVAL][:CLUSTER_INTERVAL]
    chosen = top + interval
    return [c for c, _ in chosen], [p for _, p in chosen]


def _cluster_scores(run: Run, source: Source, result: SourceScores, examples: UnitExamples,
                    tokens: dict[int, list[int]], windows: Windows) -> None:
    chosen = {u: _cluster_examples(examples, u) for u in examples.by_unit}
    chosen = {u: cp for u, cp in chosen.items() if len(cp[0]) >= MIN_CLUSTER_EXAMPLES}
    keys = sorted({(c, p) for cs, ps in chosen.values() for c, p in zip(cs, ps, strict=True)})
    if not keys:
        return
    vectors = windows.vectors(keys, tokens)
    common = windows.common()
    row = {key: i for i, key in enumerate(keys)}
    units = sorted(chosen)
    splits = context_cluster_polysemanticity_many(  # every unit's 2-means in batches: the per-unit result
        [vectors[[row[k] for k in zip(*chosen[u], strict=True)]] for u in units],
        [torch.tensor([examples.max_value[(u, c)] for c in chosen[u][0]], dtype=torch.float64) for u in units],
        common=common)
    for unit, split in zip(units, splits, strict=True):
        result.rows.append((unit, CLUSTERS, split.score, {"clarity": split.clarity,
                                                          "sizes": sorted(split.sizes, reverse=True)}))


# ---- toy models: features per neuron from the true dictionary ---------------------------------
def _toy_features_per_neuron(run: Run, result: SourceScores, examples: UnitExamples) -> None:
    """Each example is one synthetic input; its tokens are the active features and its values
    their contributions W[f, n] x_f to the neuron, so the true dictionary's contributions are
    read straight off the interval and random examples. Counted like a real neuron's score
    (``features_per_neuron_from_totals``: features under 1% of the neuron's mass left out)."""
    index = {pk: i for i, pk in result.units.items()}
    mass: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    inputs: dict[int, int] = defaultdict(int)
    seen: set[tuple[int, int]] = set()
    rows = Example.objects.filter(run=run, unit_id__in=list(index), kind__in=[Example.Kind.INTERVAL,
                                                                           Example.Kind.RANDOM])
    for unit_id, context_id, ids, values in rows.values_list("unit_id", "context_id", "context__tokens", "values"):
        if (unit_id, context_id) in seen:
            continue  # an input sampled both as interval and random example counts once
        seen.add((unit_id, context_id))
        inputs[index[unit_id]] += 1
        contributions = np.frombuffer(bytes(values), dtype="<f2").astype(np.float64)
        for feature, value in zip(decode_tokens(bytes(ids)), contributions, strict=True):
            mass[index[unit_id]][feature] += abs(float(value))
    for unit, per_feature in sorted(mass.items()):
        features = sorted(per_feature)
        value = float(scores.features_per_neuron_from_totals(torch.tensor([per_feature[f] for f in features])))
        result.rows.append((unit, FEATURES_PER_NEURON, value, {"dictionary": "toy", "inputs": inputs[unit]}))


