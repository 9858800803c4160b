"""Neurons x the SAE features on their hook: features per neuron, neurons per feature, correlation
and context-overlap relations, and the layer's superposition."""


from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import torch

from browser.catalog.models import Sae, Source, UnitRelation
from browser.catalog.services import sae_quality_merge
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.compute import comparison, hooks, scores
from workers.compute.config import HarvestConfig
from workers.compute.harvest import make_batch
from workers.pipeline.harvest import merged_correlation
from workers.pipeline.loader import device_for, model_on, sae_on, source_sae
from workers.pipeline.scores.common import (
    BATCH,
    CONTRIBUTORS,
    FEATURES_PER_NEURON,
    NEURONS_PER_FEATURE,
    RELATED,
    VERSION,
    Progress,
    SourceScores,
    UnitExamples,
)

GROUPS = 5
"""Disjoint groups of a neuron's example contexts (by context index) for the jackknife interval of
features per neuron."""
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
    groups = comparison.neuron_shares_mass(pair.mass, pair.W_dec)  # [G, N, F]
    value, low, high = scores.features_per_neuron_interval(groups)
    shares = groups.sum(dim=0)  # [N, F]
    explained = scores.explained_share(shares)
    totals = shares.sum(dim=1, keepdim=True)
    top_v, top_i = comparison.stable_top_k(shares / totals.clamp_min(1e-300), CONTRIBUTORS)
    for n in range(len(value)):
        if float(totals[n]) > 0:
            top = [{"feature": int(f), "share": float(v)} for v, f in zip(top_v[n], top_i[n], strict=True) if v > 0]
            neurons.rows.append((n, FEATURES_PER_NEURON, float(value[n]), {
                "sae": features.source.name, "tokens": int(pair.tokens[n]), "top": top,
                "interval": [float(low[n]), float(high[n])], "explained_share": float(explained[n]),
                "min_share": scores.FPN_MIN_SHARE}))
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
        self.mass = torch.zeros(GROUPS, n, f, dtype=torch.float64, device=self.device)  # by context index % GROUPS
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
            group = torch.tensor([ctx % GROUPS for ctx in batch_indices], device=acts.device).repeat_interleave(L)
            for g in group.unique().tolist():  # each token in one group: one product's worth of work in all
                cols = group == g
                self.mass[g] += comparison.carried_mass(member[:, cols], features[cols])
            self.tokens += member.sum(dim=1)


# ---- layer superposition ------------------------------------------------------------------------
def _superposition(run: Run, source: Source) -> int:
    """Live distinct features per dimension of an SAE's layer, stored in ``Sae.quality``."""
    sae_row = Sae.objects.get(source=source)
    fired = dict(UnitStats.objects.filter(run=run, unit__source=source).values_list("unit__index", "fire_count"))
    live = torch.tensor([fired.get(i, 0) > 0 for i in range(source.n_units)])
    W_dec = sae_on(sae_row, "cpu").W_dec.detach()
    distinct = scores.distinct_live_features(W_dec, live)
    sae_quality_merge(sae=sae_row, stats={"superposition": {
        "value": int(distinct.sum()) / W_dec.shape[1], "distinct_live": int(distinct.sum()), "live": int(live.sum()),
        "d_in": int(W_dec.shape[1]), "duplicate_cosine": scores.DUPLICATE_COSINE, "run": run.pk, "version": VERSION}})
    return 1


