"""The score job: typed Score rows for every unit of a finished harvest run, neuron-feature
comparison tables (UnitRelation rows), and each SAE's layer superposition.

Per unit (all sources): ``density`` (from UnitStats), ``top_token_concentration`` (the top
examples' max tokens), ``context_cluster_polysemanticity`` (MiniLM embeddings of a window around
the max token of the top and interval examples, less the mean embedding of random windows of the
corpus, split by 2-means weighted by activation; text models only).

Per SAE on ``mlp.hook_post`` whose neurons are also in the run: ``features_per_neuron`` on each
neuron (over the tokens of its interval and random examples on which it fires),
``neurons_per_feature`` on each feature (from the decoder), and relations both ways: activation
``correlation`` (Pearson over the run's corpus, from the running sums its harvest pass kept:
every ``corr_stride``-th valid token, see ``HarvestConfig``) and ``context_overlap`` (Jaccard of
the top example contexts). Only the top ``RELATED`` per unit are kept. The layer's superposition
(live distinct features per dimension) goes to the SAE's ``quality`` JSON: it describes the
layer, not a unit.

For a toy model's run (``workers/pipeline/toy.py``), ``features_per_neuron`` comes from the toy's
true dictionary: an example's per-token values are exactly each active feature's contribution.

Rows are replaced per source in one transaction, so running the job twice gives the same rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from django.db import transaction

from browser.catalog.models import Model, Sae, Source, Unit, UnitRelation
from browser.catalog.services import scores_replace, unit_relations_replace
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.compute import comparison, hooks, loading, scores
from workers.compute.config import HarvestConfig
from workers.compute.harvest import make_batch
from workers.pipeline.harvest import merged_correlation
from workers.pipeline.loader import device_for, model_on, sae_on, source_sae

VERSION = 2
"""2: the context-cluster score removes the corpus's common component and weights by activation."""
DENSITY = "density"
CONCENTRATION = "top_token_concentration"
CLUSTERS = "context_cluster_polysemanticity"
FEATURES_PER_NEURON = "features_per_neuron"
NEURONS_PER_FEATURE = "neurons_per_feature"
NAMES = (DENSITY, CONCENTRATION, CLUSTERS, FEATURES_PER_NEURON, NEURONS_PER_FEATURE)
MIN_CLUSTER_EXAMPLES = 6
"""Fewer examples than this give no cluster score: 2-means on a handful of points says nothing."""
CLUSTER_TOP = CLUSTER_INTERVAL = 24
"""At most this many top and interval examples are embedded per unit (bounds the MiniLM work)."""
WINDOW = 8
"""Tokens each side of the max token in an embedded window."""
COMMON_WINDOWS = 256
"""Random windows of the corpus (``common_windows``) whose mean embedding is the common component
removed before clustering. On the Shakespeare fixture 256 land within 14% of the mean over every
window; another sample, or every window, moved layer-2 neuron scores by 0.04 on average (rank
correlation 0.87-0.92) and changed no planted-unit check (docs/design.md)."""
RELATED = 8
"""Relations kept per unit and kind."""
CONTRIBUTORS = 5
"""Top features listed in a features_per_neuron score's details."""
BATCH = 32

Progress = Callable[..., None]


class ScoreInputError(ValueError):
    """The run cannot be scored (not finished, or not found)."""


@dataclass
class UnitExamples:
    """One source's examples in the run: (kind, context id, max position) per unit index."""

    by_unit: dict[int, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))

    def contexts(self, unit: int, kinds: tuple[int, ...]) -> list[int]:
        return [c for k, c, _ in self.by_unit.get(unit, []) if k in kinds]


@dataclass
class SourceScores:
    """What the job computed for one source: score rows (unit index, name, value, details)."""

    source: Source
    units: dict[int, int]
    rows: list[tuple[int, str, float, dict[str, Any]]] = field(default_factory=list)


# ---- the job ------------------------------------------------------------------------------------
def scores_compute(*, run_id: int, progress: Progress) -> dict[str, int]:
    """Compute and store every score, relation and layer superposition of a finished run."""
    run = Run.objects.select_related("model", "model__tokenizer", "corpus", "corpus__tokenizer").filter(
        pk=run_id).first()
    if run is None or run.status != Run.Status.DONE:
        raise ScoreInputError(f"run #{run_id} is not a finished harvest run")
    sources = list(run.sources.select_related("sae", "sae__weights").order_by("layer", "kind", "name"))
    examples = {s.pk: _examples(run, s) for s in sources}
    results = {s.pk: SourceScores(s, dict(Unit.objects.filter(source=s).values_list("index", "pk")))
               for s in sources}
    windows = Windows(run)
    for i, source in enumerate(sources):
        progress(i, len(sources), f"unit scores of {source.name}")
        _unit_scores(run, results[source.pk], examples[source.pk], windows)
    if run.model.kind == Model.Kind.TOY:
        for source in sources:
            _toy_features_per_neuron(run, results[source.pk], examples[source.pk])
    relations = _comparisons(run, sources, examples, results, progress)
    counts = _write(run, results, relations)
    counts["superposition"] = sum(_superposition(run, s) for s in sources if s.kind == Source.Kind.SAE)
    return counts


def _examples(run: Run, source: Source) -> UnitExamples:
    index = dict(Unit.objects.filter(source=source).values_list("pk", "index"))
    out = UnitExamples()
    rows = Example.objects.filter(run=run, unit_id__in=list(index)).order_by("unit_id", "kind", "bucket", "rank")
    for unit_id, kind, context_id, max_pos in rows.values_list("unit_id", "kind", "context_id", "max_pos"):
        out.by_unit[index[unit_id]].append((kind, context_id, max_pos))
    return out


def _context_tokens(context_ids: set[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    ids = sorted(context_ids)
    for start in range(0, len(ids), 2048):
        for pk, tokens in Context.objects.filter(pk__in=ids[start:start + 2048]).values_list("pk", "tokens"):
            out[pk] = decode_tokens(bytes(tokens))
    return out


# ---- per-unit scores ---------------------------------------------------------------------------
def _unit_scores(run: Run, result: SourceScores, examples: UnitExamples, windows: Windows) -> None:
    source = result.source
    for pk_index, density, fire in _density_rows(run, result):
        result.rows.append((pk_index, DENSITY, density, {"fire_count": fire}))
    wanted = {c for unit in examples.by_unit.values() for k, c, _ in unit if k == Example.Kind.TOP}
    if run.model.kind != Model.Kind.TOY:
        wanted |= {c for u in examples.by_unit for c in _cluster_examples(examples, u)[0]}
    tokens = _context_tokens(wanted)
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
    read straight off the interval and random examples."""
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
        value = float(scores.effective_number(torch.tensor([per_feature[f] for f in features])))
        result.rows.append((unit, FEATURES_PER_NEURON, value, {"dictionary": "toy", "inputs": inputs[unit]}))


# ---- neurons x SAE features ----------------------------------------------------------------------
Relations = dict[tuple[str, int], list[tuple[float, int]]]
"""(kind, unit id) -> candidate (value, other unit id) pairs."""


def _pairs(sources: list[Source]) -> list[tuple[Source, Source]]:
    """(neuron source, SAE source) pairs on the same mlp.hook_post hook point."""
    neurons = {s.hook_point: s for s in sources if s.kind == Source.Kind.NEURONS}
    return [(neurons[s.hook_point], s) for s in sources
            if s.kind == Source.Kind.SAE and s.hook_point.endswith("mlp.hook_post") and s.hook_point in neurons]


def _comparisons(run: Run, sources: list[Source], examples: dict[int, UnitExamples],
                 results: dict[int, SourceScores], progress: Progress) -> Relations:
    relations: Relations = defaultdict(list)
    for neuron_src, sae_src in _pairs(sources):
        progress(0, 1, f"{neuron_src.name} x {sae_src.name}")
        pair = _PairPass(run, neuron_src, sae_src, examples[neuron_src.pk])
        pair.run(progress)
        n_units, f_units = results[neuron_src.pk].units, results[sae_src.pk].units
        _pair_scores(pair, results[neuron_src.pk], results[sae_src.pk])
        corr = merged_correlation(run, neuron_src.name, sae_src.name)
        if corr is not None:
            _add_relations(relations, UnitRelation.Kind.CORRELATION, n_units, f_units,
                           corr.top_k(RELATED), corr.transposed().top_k(RELATED))
        overlap = comparison.jaccard_matrix(
            [examples[neuron_src.pk].contexts(u, (Example.Kind.TOP,)) for u in range(neuron_src.n_units)],
            [examples[sae_src.pk].contexts(u, (Example.Kind.TOP,)) for u in range(sae_src.n_units)])
        _add_relations(relations, UnitRelation.Kind.CONTEXT_OVERLAP, n_units, f_units,
                       comparison.stable_top_k(overlap, RELATED), comparison.stable_top_k(overlap.T, RELATED),
                       positive_only=True)
    return relations


def _add_relations(relations: Relations, kind: str, neurons: dict[int, int], features: dict[int, int],
                   by_neuron: tuple[torch.Tensor, torch.Tensor], by_feature: tuple[torch.Tensor, torch.Tensor],
                   positive_only: bool = False) -> None:
    for units, others, (values, indices) in ((neurons, features, by_neuron), (features, neurons, by_feature)):
        for i, (row_v, row_i) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
            relations[(kind, units[i])].extend(
                (v, others[j]) for v, j in zip(row_v, row_i, strict=True) if v > 0 or not positive_only)


def _pair_scores(pair: _PairPass, neurons: SourceScores, features: SourceScores) -> None:
    shares = comparison.neuron_shares_mass(pair.mass, pair.W_dec)  # [N, F]
    effective = scores.effective_number(shares)
    totals = shares.sum(dim=1, keepdim=True)
    top_v, top_i = comparison.stable_top_k(shares / totals.clamp_min(1e-300), CONTRIBUTORS)
    for n in range(len(effective)):
        if float(totals[n]) > 0:
            top = [{"feature": int(f), "share": float(v)} for v, f in zip(top_v[n], top_i[n], strict=True) if v > 0]
            neurons.rows.append((n, FEATURES_PER_NEURON, float(effective[n]),
                                 {"sae": features.source.name, "tokens": int(pair.tokens[n]), "top": top}))
    for f, value in enumerate(scores.neurons_per_feature(pair.W_dec).tolist()):
        features.rows.append((f, NEURONS_PER_FEATURE, value, {}))


class _PairPass:
    """One forward pass over the example contexts of a neuron source, with an SAE on its hook:
    per neuron, the SAE features' |activation| mass over the tokens of its interval and random
    examples on which it fires."""

    def __init__(self, run: Run, neurons: Source, sae_source: Source, examples: UnitExamples) -> None:
        self.run_row, self.neurons, self.sae_source = run, neurons, sae_source
        self.device = device_for()
        self.sae = source_sae(sae_source, self.device)
        self.W_dec = self.sae.W_dec.detach().float().cpu()  # [F, N]
        member_ids = {u: examples.contexts(u, (Example.Kind.INTERVAL, Example.Kind.RANDOM))
                      for u in range(neurons.n_units)}
        index_of = dict(Context.objects.filter(pk__in={c for cs in member_ids.values() for c in cs})
                        .values_list("pk", "index"))
        self.owners: dict[int, list[int]] = defaultdict(list)  # context index -> neurons it is an example of
        for u, cs in member_ids.items():
            for c in sorted(set(cs)):
                self.owners[index_of[c]].append(u)
        n, f = neurons.n_units, self.W_dec.shape[0]
        self.mass = torch.zeros(n, f, dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros(n, dtype=torch.int64, device=self.device)

    def run(self, progress: Progress) -> None:
        model = self.run_row.model
        torch_model, arch, tokenizer = model_on(model, self.device)
        indices = sorted(self.owners)
        config = HarvestConfig.from_dict(self.run_row.config)
        special = set(self.run_row.corpus.tokenizer.special_ids) if config.exclude_special else set()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        hook = self.neurons.hook_point
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(torch_model, arch, [hook], model.n_layers, captured.__setitem__):
            for done, (batch_indices, token_lists) in enumerate(self._batches(indices)):
                batch = make_batch(batch_indices, token_lists, self.run_row.corpus.context_length, special,
                                   config.exclude_special, int(pad))
                hooks.forward(torch_model, batch.ids.to(self.device), batch.attention_mask.to(self.device))
                self._update(captured[hook].float(), batch.invalid.to(self.device), batch_indices)
                progress(min((done + 1) * BATCH, len(indices)), len(indices), f"{self.sae_source.name}: forward pass")
        self.mass, self.tokens = self.mass.cpu(), self.tokens.cpu()

    def _batches(self, indices: list[int]) -> Iterator[tuple[list[int], list[list[int]]]]:
        corpus = self.run_row.corpus
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            rows = dict(Context.objects.filter(corpus=corpus, index__in=chunk).values_list("index", "tokens"))
            yield chunk, [decode_tokens(bytes(rows[i])) for i in chunk]

    @torch.inference_mode()
    def _update(self, acts: torch.Tensor, invalid: torch.Tensor, batch_indices: list[int]) -> None:
        B, L, N = acts.shape
        features = self.sae.encode(acts).float().reshape(B * L, -1)  # [B, L, F] -> [B*L, F]
        x = acts.reshape(B * L, N)
        valid = ~invalid.reshape(-1)
        owner = torch.zeros(N, B, dtype=torch.bool, device=acts.device)  # neuron n has context b as example
        for b, ctx in enumerate(batch_indices):
            if self.owners.get(ctx):
                owner[self.owners[ctx], b] = True
        if owner.any():
            member = owner.repeat_interleave(L, dim=1) & (x.T > 0) & valid[None, :]  # [N, B*L]
            self.mass += comparison.carried_mass(member, features).double()
            self.tokens += member.sum(dim=1)


# ---- layer superposition ------------------------------------------------------------------------
def _superposition(run: Run, source: Source) -> int:
    """Live distinct features per dimension of an SAE's layer, stored in ``Sae.quality``."""
    sae_row = Sae.objects.get(source=source)
    fired = dict(UnitStats.objects.filter(run=run, unit__source=source).values_list("unit__index", "fire_count"))
    live = torch.tensor([fired.get(i, 0) > 0 for i in range(source.n_units)])
    W_dec = sae_on(sae_row, "cpu").W_dec.detach()
    distinct = scores.distinct_live_features(W_dec, live)
    quality = {**sae_row.quality, "superposition": {
        "value": int(distinct.sum()) / W_dec.shape[1], "distinct_live": int(distinct.sum()), "live": int(live.sum()),
        "d_in": int(W_dec.shape[1]), "duplicate_cosine": scores.DUPLICATE_COSINE, "run": run.pk, "version": VERSION}}
    Sae.objects.filter(pk=sae_row.pk).update(quality=quality)
    return 1


# ---- writing ------------------------------------------------------------------------------------
def _write(run: Run, results: dict[int, SourceScores], relations: Relations) -> dict[str, int]:
    """Replace this job's rows, one transaction per source (scores and the relations of its units)."""
    counts = {"scores": 0, "relations": 0}
    for result in results.values():
        unit_ids = list(result.units.values())
        with transaction.atomic():
            counts["scores"] += scores_replace(run=run, unit_ids=unit_ids, names=NAMES, version=VERSION, rows=(
                (result.units[u], name, value, details) for u, name, value, details in result.rows))
            for kind in (UnitRelation.Kind.CORRELATION, UnitRelation.Kind.CONTEXT_OVERLAP):
                counts["relations"] += unit_relations_replace(unit_ids=unit_ids, kind=kind, rows=_ranked(
                    relations, kind, unit_ids))
    return counts


def _ranked(relations: Relations, kind: str, unit_ids: list[int]) -> Iterator[tuple[int, int, int, float]]:
    """Each unit's best RELATED candidates over every SAE (or neuron source) it was compared with."""
    for unit_id in unit_ids:
        kept = sorted(relations.get((kind, unit_id), []), key=lambda vo: (-vo[0], vo[1]))[:RELATED]
        for rank, (value, other) in enumerate(kept):
            yield unit_id, rank, other, value
