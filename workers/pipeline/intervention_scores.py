"""Intervention scores: what each unit of a finished run does, measured by zero-ablating it on its own
top and interval contexts (``score --run ID --intervention``).

Per unit, up to ``contexts`` examples (half top, half interval, the best first), each cut just after
its max token, are run plain and with the unit zero-ablated at every position:

- ``intervention_kl``: mean KL(plain || ablated) of the next-token distribution after the max token
  (details: contexts, and ``lowered``, the tokens whose probability the ablation lowers most on
  average, with the mean change; the empirical output next to the direct-path logit effects);
- ``intervention_logit_drop``: mean over those contexts of log P_plain - log P_ablated of the set of
  tokens the unit's direct-path logit effects push up most (P: their summed probability; positive:
  the unit does promote them).

A unit without examples (dead) gets 0 for both. Rows are replaced per source in one transaction.
Then each label of the source's units gets ``label_output_match`` (``workers.pipeline.label_outputs``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from django.db import transaction

from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import scores_replace
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.runs.models import Run
from workers.compute.ablation import ablation_effect
from workers.compute.interventions import Edit
from workers.pipeline import loader
from workers.pipeline.label_outputs import label_output_scores
from workers.pipeline.scores import ScoreInputError

VERSION = 1
KL = "intervention_kl"
LOGIT_DROP = "intervention_logit_drop"
NAMES = (KL, LOGIT_DROP)
WATCHED = 5
"""Direct-path "up" tokens whose log-probability change is measured (the unit's strongest)."""
LOWERED = 10
"""Tokens kept per unit in ``lowered``."""

Progress = Callable[..., None]
Row = tuple[int, str, float, dict[str, Any]]


def _examples(run: Run, source: Source, contexts: int) -> dict[int, list[tuple[int, int]]]:
    """unit pk -> [(context id, max pos)]: the best ``contexts // 2`` top examples, then interval
    examples up to ``contexts``, taken across octaves (each octave's first, then each one's second...)."""
    top: dict[int, list[tuple[int, int]]] = defaultdict(list)
    interval: dict[int, list[tuple[int, int]]] = defaultdict(list)
    rows = Example.objects.filter(run=run, unit__source=source, kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL])
    for unit_id, kind, ctx, pos in rows.order_by("unit_id", "kind", "rank", "-bucket").values_list(
            "unit_id", "kind", "context_id", "max_pos"):
        (top if kind == Example.Kind.TOP else interval)[unit_id].append((ctx, pos))
    out: dict[int, list[tuple[int, int]]] = {}
    for unit_id in set(top) | set(interval):
        chosen = top[unit_id][: contexts // 2]
        chosen += [e for e in interval[unit_id] if e not in chosen][: contexts - len(chosen)]
        out[unit_id] = chosen
    return out


def _tokens(context_ids: set[int]) -> dict[int, list[int]]:
    pairs = Context.objects.filter(pk__in=sorted(context_ids)).values_list("pk", "tokens")
    return {pk: decode_tokens(bytes(tokens)) for pk, tokens in pairs.iterator(chunk_size=2048)}


def _unit_rows(unit: Unit, effect: Any, watched: list[int], n: int) -> list[Row]:
    lowered = torch.topk(-effect.prob_change, LOWERED)
    kl_details = {"contexts": n, "lowered": [[int(t), round(-float(v), 6)]
                                             for t, v in zip(lowered.indices, lowered.values, strict=True)]}
    drop = -float(effect.logprob_change.mean()) if watched else 0.0
    return [(unit.pk, KL, float(effect.kl.mean()), kl_details),
            (unit.pk, LOGIT_DROP, drop, {"contexts": n, "tokens": watched})]


def _dead_rows(unit: Unit) -> list[Row]:
    return [(unit.pk, KL, 0.0, {"contexts": 0, "lowered": []}), (unit.pk, LOGIT_DROP, 0.0, {"contexts": 0})]


def source_rows(run: Run, source: Source, contexts: int, device: str, progress: Progress) -> list[Row]:
    """Score rows for every unit of one source."""
    torch_model, arch, tokenizer = loader.model_on(run.model, device)
    sae = loader.source_sae(source, device) if source.kind in (Source.Kind.SAE, Source.Kind.TRANSCODER) else None
    examples = _examples(run, source, contexts)
    tokens = _tokens({ctx for chosen in examples.values() for ctx, _ in chosen})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    units = list(Unit.objects.filter(source=source).order_by("index"))
    rows: list[Row] = []
    for i, unit in enumerate(units):
        chosen = examples.get(unit.pk, [])
        if not chosen:
            rows += _dead_rows(unit)
            continue
        watched = [int(t) for t, _ in (unit.logit_effects or {}).get("up", [])[:WATCHED]]
        prefixes = [tokens[ctx][: pos + 1] for ctx, pos in chosen]
        effect = ablation_effect(torch_model, arch, run.model.n_layers, prefixes,
                                 Edit(source.hook_point, unit.index, "zero", sae=sae), watched or [0], pad)
        rows += _unit_rows(unit, effect, watched, len(prefixes))
        progress(i + 1, len(units), f"intervention scores of {source.name}")
    return rows


def intervention_scores(*, run_id: int, contexts: int = 16, progress: Progress, device: str = "auto") -> dict[str, int]:
    """Compute and store both intervention scores for every unit of a finished causal-LM run."""
    run = Run.objects.select_related("model").filter(pk=run_id).first()
    if run is None or run.status != Run.Status.DONE:
        raise ScoreInputError(f"run #{run_id} is not a finished harvest run")
    if run.model.kind != Model.Kind.CAUSAL_LM:
        raise ScoreInputError(f"{run.model.name} is not a causal language model: intervention scores measure "
                              "next-token predictions")
    if not 1 <= contexts <= 256:
        raise ScoreInputError("contexts per unit must be 1 to 256")
    counts = {"scores": 0}
    for source in run.sources.order_by("layer", "kind", "name"):
        rows = source_rows(run, source, contexts, loader.device_for(device), progress)
        with transaction.atomic():
            counts["scores"] += scores_replace(run=run, unit_ids=[r[0] for r in rows[::2]], names=NAMES,
                                                   version=VERSION, rows=rows)
        counts["label_output_matches"] = counts.get("label_output_matches", 0) + label_output_scores(
            run=run, source=source, kl_name=KL, kl_version=VERSION)
    return counts
