"""Finalize: merge every shard's state exactly (with the per-token values its first pass kept for
the examples that could be chosen), compute logit effects, and write statistics, examples and
browse fields with COPY in one transaction. No forward pass: the model is loaded only for the
logit effects of a causal LM."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from django.db import connection, transaction
from safetensors.torch import load as st_load

from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import units_ensure
from browser.core.selectors import blob_read
from browser.examples.services import examples_write, run_results_clear, stats_write, units_set_browse_fields
from browser.runs.models import Job, Run, Shard
from browser.runs.services import (
    FINALIZE_LOCK,
    job_finish,
    job_update,
    run_claim_finalize,
    run_lock,
    run_mark,
)
from workers.compute.config import HarvestConfig
from workers.compute.logits import logit_effects
from workers.compute.stats import UnitAccumulator, UnitSummary, summarize
from workers.pipeline.harvest.create import HarvestInputError
from workers.pipeline.harvest.examples import (
    SourceExamples,
    context_rows,
    example_rows,
    source_examples,
    top_tokens,
)
from workers.pipeline.harvest.partials import unpack
from workers.pipeline.harvest.runtime import UNIT_OFFSET_STRIDE, note, worker_name
from workers.pipeline.loader import device_for, model_on
from workers.pipeline.saes import sae_directions
from workers.queueing import run_queue_embeddings


def merged_states(run: Run, config: HarvestConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Every source's state, merged over all shards (exact). A run of one shard has its state
    already: a shard stores what ``state()`` gives, which merging into nothing would only copy,
    sweep and sort again (seconds for a 16k SAE)."""
    merged: dict[str, UnitAccumulator] = {}
    whole: dict[str, dict[str, torch.Tensor]] = {}
    offsets = {s.name: i * UNIT_OFFSET_STRIDE for i, s in enumerate(config.sources)}
    shards = list(Shard.objects.filter(run=run).select_related("partial").order_by("index"))
    for shard in shards:
        if shard.partial is None:
            raise RuntimeError(f"shard {shard.index} of run {run.pk} has no stored result")
        tensors = st_load(blob_read(shard.partial))
        for source in config.sources:
            state = unpack({key.split("/", 1)[1]: t for key, t in tensors.items()
                            if key.split("/", 1)[0] == source.name})
            if len(shards) == 1:
                whole[source.name] = state
            elif source.name in merged:
                merged[source.name].merge_state(state)
            else:
                merged[source.name] = UnitAccumulator.from_state(
                    state, seed=config.seed, hist_stride=config.hist_stride, unit_offset=offsets[source.name],
                    n_intervals=config.n_intervals)
    return whole if len(shards) == 1 else {name: acc.state() for name, acc in merged.items()}


def finalize(*, run_id: int, progress: Callable[..., None]) -> Run:
    """Merge the shards, compute display values, and write every result in one transaction.

    The expensive second pass runs first, spooling example rows to a temporary file; the
    transaction then only COPYs, so readers see all of the run's results or none.
    """
    with run_lock(run_id=run_id, kind=FINALIZE_LOCK) as mine:
        run = Run.objects.select_related("model", "corpus", "corpus__tokenizer").get(pk=run_id)
        if not mine or run.status in {Run.Status.DONE, Run.Status.CANCELLED, Run.Status.FAILED}:
            return run  # another live worker is finalizing it, or nothing is left to do
        if not run_claim_finalize(run=run):
            raise HarvestInputError(f"run {run.pk} cannot be finalized (status: {run.status})")
        note(run, f"{worker_name()} finalizing")
        return _finalize(run, progress)


def _finalize(run: Run, progress: Callable[..., None]) -> Run:
    config = HarvestConfig.from_dict(run.config)
    clock = _Phases()
    # Each phase names itself on the job (the bar's text), forced past the throttle.
    progress(run.contexts_total, run.contexts_total, f"finalizing: merging {run.n_shards} shard state(s)", force=True)
    states = merged_states(run, config)
    summaries = {name: summarize(state, n_intervals=config.n_intervals) for name, state in states.items()}
    chosen = {name: source_examples(summaries[name], state) for name, state in states.items()}
    del states  # what is left of them is held by the chosen examples
    contexts = context_rows(run.corpus, {int(c) for ex in chosen.values() for c in np.unique(ex.context)})
    strings = run.corpus.tokenizer.tokens
    best = {key: token for name, ex in chosen.items() for key, token in top_tokens(name, ex, contexts, strings).items()}
    sources = {s.name: s for s in run.sources.all()}
    clock.lap("merge")
    n_units = sum(len(units) for units in summaries.values())
    progress(run.contexts_total, run.contexts_total, f"finalizing: logit effects of {n_units:,} units", force=True)
    effects = _logit_effects(run, config, sources)
    clock.lap("logit_effects")
    _write(run, config, summaries, chosen, contexts, best, effects, sources, progress)
    clock.lap("write")
    _report_phases(run, clock.seconds)
    run.refresh_from_db()
    return run


def _write(run: Run, config: HarvestConfig, summaries: dict[str, list[UnitSummary]],
           chosen: dict[str, SourceExamples], contexts: dict[int, tuple[int, int, bytes]],
           best: dict[tuple[str, int], str], effects: dict[tuple[str, int], dict[str, Any]],
           sources: dict[str, Source], progress: Callable[..., None]) -> None:
    """Everything in one transaction: readers see all of the run's results or none."""
    n_units = sum(len(units) for units in summaries.values())
    # Progress can't be reported from inside the transaction (its row would stay locked and
    # unseen until the commit): the last message says what the commit writes.
    progress(run.contexts_total, run.contexts_total,
             f"finalizing: writing {sum(len(ex) for ex in chosen.values()):,} examples of {n_units:,} units",
             force=True)
    with transaction.atomic():
        # A crash before the WAL reaches disk loses only this commit, and the run is then
        # finalized again: no need to wait for the flush of a large bulk load.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
        for source in sources.values():
            units_ensure(source=source)
        run_results_clear(run=run, sources=list(sources.values()))
        unit_ids = {(src_id, index): pk for pk, src_id, index in
                    Unit.objects.filter(source__in=sources.values()).values_list("pk", "source_id", "index")}
        stats_write(run=run, rows=_stats_rows(summaries, sources, unit_ids, config))
        examples_write(run=run, rows=example_rows(chosen, sources, unit_ids, contexts))
        units_set_browse_fields(run=run, rows=(
            (unit_ids[(sources[name].pk, u)], best.get((name, u), ""), effects.get((name, u), {}))
            for name, units in summaries.items() for u in range(len(units))))
        run_mark(run=run, status=Run.Status.DONE)
        run_queue_embeddings(run_id=run.pk)  # semantic search reads the units' new top contexts
        if run.job_id:
            job_finish(job_id=run.job_id, status=Job.Status.SUCCEEDED)


class _Phases:
    """Seconds of each finalize phase, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _report_phases(run: Run, seconds: dict[str, float]) -> None:
    """The phases' seconds on the job: a log line, and ``params["finalize_s"]`` for the bench."""
    note(run, "finalize took " + ", ".join(f"{name.replace('_', ' ')} {s:.1f} s" for name, s in seconds.items()))
    if run.job_id:
        job = Job.objects.get(pk=run.job_id)
        job_update(job=job, params={**job.params, "finalize_s": seconds})


def _stats_rows(summaries: dict[str, list[UnitSummary]], sources: dict[str, Source],
                unit_ids: dict[tuple[int, int], int], config: HarvestConfig) -> Iterator[tuple[Any, ...]]:
    for name, units in summaries.items():
        for u, s in enumerate(units):
            density = s.fire_count / s.n_tokens if s.n_tokens else 0.0
            yield (unit_ids[(sources[name].pk, u)], s.n_tokens, s.fire_count, density, s.mean,
                   s.max if np.isfinite(s.max) else 0.0, np.asarray(s.hist, dtype="<i8").tobytes(),
                   config.hist_stride)


def _logit_effects(run: Run, config: HarvestConfig,
                   sources: dict[str, Source]) -> dict[tuple[str, int], dict[str, Any]]:
    if run.model.kind != Model.Kind.CAUSAL_LM:
        return {}
    torch_model, arch, _ = model_on(run.model, device_for(config.device), config.dtype)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    layers = arch.layers(torch_model)
    for name, source in sources.items():
        if source.kind in (Source.Kind.SAE, Source.Kind.TRANSCODER):
            directions = sae_directions(source, arch, torch_model)
        elif source.hook_point.endswith("mlp.hook_post"):
            directions = arch.neuron_directions(layers[source.layer])
        else:
            continue
        for u, effect in enumerate(logit_effects(torch_model, arch, directions)):
            out[(name, u)] = effect
    return out
