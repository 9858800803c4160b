"""Per-unit scores: density, top-token concentration, context clusters (MiniLM windows), and a toy
model's features per neuron from its true dictionary."""


from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings

from browser.catalog.models import Model, Source
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.compute import loading, scores
from workers.pipeline.loader import device_for
from workers.pipeline.scores.common import (
    CLUSTER_INTERVAL,
    CLUSTER_TOP,
    CLUSTERS,
    COMMON_WINDOWS,
    CONCENTRATION,
    DENSITY,
    FEATURES_PER_NEURON,
    MIN_CLUSTER_EXAMPLES,
    WINDOW,
    SourceScores,
    UnitExamples,
    context_tokens,
)


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
        _cluster_scores(run, source, result, examples, tokens, windows)


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


def window_text(tokenizer: Any, ids: list[int], pos: int) -> str:
    """The decoded window of WINDOW tokens each side of ``pos`` (special tokens dropped)."""
    return str(tokenizer.decode(ids[max(0, pos - WINDOW): pos + WINDOW + 1], skip_special_tokens=True)).strip()


class Windows:
    """MiniLM embeddings of example windows for one job, each (context, position) embedded once
    however many units and sources share it, and the corpus's common component."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._tokenizer: Any = None
        self._embedder: Any = None
        self._rows: dict[tuple[int, int], int] = {}
        self._vectors = torch.empty(0)
        self._common: torch.Tensor | None = None

    @property
    def tokenizer(self) -> Any:
        """The run's model's tokenizer (loaded on first use: toy models have none)."""
        if self._tokenizer is None:
            self._tokenizer = loading.load_tokenizer(self.run.model.location, Path(settings.CACHE_DIR))
        return self._tokenizer

    def _embed(self, texts: list[str]) -> torch.Tensor:
        if self._embedder is None:
            from workers.compute.embed import SentenceEmbedder

            self._embedder = SentenceEmbedder(Path(settings.CACHE_DIR), device_for())
        return self._embedder.embed(texts)

    def vectors(self, keys: list[tuple[int, int]], tokens: dict[int, list[int]]) -> torch.Tensor:
        """[N, d] embeddings of the windows around (context id, position) ``keys``."""
        new = sorted({k for k in keys if k not in self._rows})
        if new:
            embedded = self._embed([window_text(self.tokenizer, tokens[c], p) for c, p in new])
            self._rows.update({k: len(self._vectors) + i for i, k in enumerate(new)})
            self._vectors = torch.cat([self._vectors, embedded]) if len(self._vectors) else embedded
        return self._vectors[[self._rows[k] for k in keys]]

    def common(self) -> torch.Tensor | None:
        if self._common is None:
            windows = common_windows(self.run, self.tokenizer)
            self._common = self._embed(windows).mean(dim=0) if windows else None
        return self._common


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
    weight = _max_values(run, [result.units[u] for u in chosen])
    for unit, (cs, ps) in sorted(chosen.items()):
        w = torch.tensor([weight[(result.units[unit], c)] for c in cs], dtype=torch.float64)
        split = scores.context_cluster_polysemanticity(
            vectors[[row[k] for k in zip(cs, ps, strict=True)]], w, common=common)
        result.rows.append((unit, CLUSTERS, split.score, {"clarity": split.clarity, "sizes": list(split.sizes)}))


def common_windows(run: Run, tokenizer: Any, n: int = COMMON_WINDOWS, seed: int = 0) -> list[str]:
    """``n`` windows of the run's corpus, each around a random non-special token of a random
    context (both drawn with replacement from a generator seeded with ``seed``): the same for
    every run on the corpus."""
    corpus = run.corpus
    if corpus.n_contexts == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(corpus.n_contexts, (n,), generator=gen).tolist()
    where = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
    rows = dict(Context.objects.filter(corpus=corpus, index__in=set(picks)).values_list("index", "tokens"))
    special = set(corpus.tokenizer.special_ids)
    out = []
    for index, u in zip(picks, where, strict=True):
        ids = decode_tokens(bytes(rows[index]))
        valid = [p for p, t in enumerate(ids) if t not in special]
        if valid:
            out.append(window_text(tokenizer, ids, valid[int(u * len(valid))]))
    return out


def _max_values(run: Run, unit_ids: list[int]) -> dict[tuple[int, int], float]:
    """(unit id, context id) -> the unit's largest activation in that context (the same for the
    top and interval example of one context)."""
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(unit_ids), 2048):
        rows = Example.objects.filter(run=run, unit_id__in=unit_ids[start:start + 2048],
                                      kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL])
        for unit_id, context_id, value in rows.values_list("unit_id", "context_id", "max_value"):
            out[(unit_id, context_id)] = value
    return out


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


