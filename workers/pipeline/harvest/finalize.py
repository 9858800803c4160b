"""Finalize: merge every shard's state exactly, run a second pass over the chosen contexts for
per-token values, and write statistics, examples and browse fields with COPY in one transaction."""

from __future__ import annotations

import pickle
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
import torch
from django.db import connection, transaction
from safetensors.torch import load as st_load

from browser.catalog.models import Source, Unit
from browser.catalog.services import units_ensure
from browser.core.blobs import blob_read
from browser.corpora.models import Context
from browser.examples.models import Example
from browser.examples.services import examples_write, run_results_clear, stats_write, units_set_browse_fields
from browser.runs.models import Job, Run, Shard
from browser.runs.services import FINALIZE_LOCK, job_finish, run_claim_finalize, run_lock, run_mark
from workers.compute.config import HarvestConfig
from workers.compute.harvest import TokenBatch, token_values
from workers.compute.logits import logit_effects
from workers.compute.stats import UnitAccumulator, UnitSummary, summarize
from workers.pipeline.harvest.create import HarvestInputError
from workers.pipeline.harvest.runtime import (
    UNIT_OFFSET_STRIDE,
    Loaded,
    batches,
    load_for_run,
    note,
    worker_name,
)
from workers.pipeline.saes import sae_directions


def merged_states(run: Run, config: HarvestConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Every source's state, merged over all shards (exact)."""
    merged: dict[str, UnitAccumulator] = {}
    offsets = {s.name: i * UNIT_OFFSET_STRIDE for i, s in enumerate(config.sources)}
    for shard in Shard.objects.filter(run=run).select_related("partial").order_by("index"):
        if shard.partial is None:
            raise RuntimeError(f"shard {shard.index} of run {run.pk} has no stored result")
        tensors = st_load(blob_read(shard.partial))
        for source in config.sources:
            state = {key.split("/", 1)[1]: t for key, t in tensors.items() if key.split("/", 1)[0] == source.name}
            if source.name in merged:
                merged[source.name].merge_state(state)
            else:
                merged[source.name] = UnitAccumulator.from_state(
                    state, seed=config.seed, hist_stride=config.hist_stride, unit_offset=offsets[source.name])
    return {name: acc.state() for name, acc in merged.items()}


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
    # Each phase names itself on the job (the bar's text), forced past the throttle.
    progress(run.contexts_total, run.contexts_total, f"finalizing: merging {run.n_shards} shard state(s)", force=True)
    summaries = {name: summarize(state, n_intervals=config.n_intervals)
                 for name, state in merged_states(run, config).items()}
    loaded = load_for_run(run, config)
    sources = {s.name: s for s in run.sources.all()}
    with tempfile.TemporaryFile() as spool:
        top_tokens, n_examples = _spool_examples(run, config, loaded, summaries, spool, progress)
        effects = _logit_effects(run, loaded, sources)
        n_units = sum(len(units) for units in summaries.values())
        # Progress can't be reported from inside the transaction (its row would stay locked and
        # unseen until the commit): the last message says what the commit writes.
        progress(run.contexts_total, run.contexts_total,
                 f"finalizing: writing {n_examples:,} examples of {n_units:,} units", force=True)
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
            examples_write(run=run, rows=_unspool(spool, sources, unit_ids))
            units_set_browse_fields(run=run, rows=(
                (unit_ids[(sources[name].pk, u)], top_tokens.get((name, u), ""), effects.get((name, u), {}))
                for name, units in summaries.items() for u in range(len(units))))
            run_mark(run=run, status=Run.Status.DONE)
            if run.job_id:
                job_finish(job_id=run.job_id, status=Job.Status.SUCCEEDED)
    run.refresh_from_db()
    return run


def _stats_rows(summaries: dict[str, list[UnitSummary]], sources: dict[str, Source],
                unit_ids: dict[tuple[int, int], int], config: HarvestConfig) -> Iterator[tuple[Any, ...]]:
    for name, units in summaries.items():
        for u, s in enumerate(units):
            density = s.fire_count / s.n_tokens if s.n_tokens else 0.0
            yield (unit_ids[(sources[name].pk, u)], s.n_tokens, s.fire_count, density, s.mean,
                   s.max if np.isfinite(s.max) else 0.0, np.asarray(s.hist, dtype="<i8").tobytes(),
                   config.hist_stride)


Chosen = dict[str, dict[int, dict[int, list[tuple[int, int, int, float]]]]]


def _chosen(summaries: dict[str, list[UnitSummary]]) -> Chosen:
    """Per source, context and unit: (kind, bucket, rank, max value) of every example to write."""
    top, interval, random = int(Example.Kind.TOP), int(Example.Kind.INTERVAL), int(Example.Kind.RANDOM)
    chosen: Chosen = {}
    for name, units in summaries.items():
        by_ctx: dict[int, dict[int, list[tuple[int, int, int, float]]]] = defaultdict(dict)
        for u, s in enumerate(units):
            for rank, (ctx, v) in enumerate(s.top):
                by_ctx[ctx].setdefault(u, []).append((top, 0, rank, v))
            for bucket, members in s.intervals:
                for rank, (ctx, v) in enumerate(members):
                    by_ctx[ctx].setdefault(u, []).append((interval, bucket, rank, v))
            for rank, (ctx, v) in enumerate(s.random):
                by_ctx[ctx].setdefault(u, []).append((random, 0, rank, v))
        chosen[name] = dict(by_ctx)
    return chosen


def _spool_examples(run: Run, config: HarvestConfig, loaded: Loaded, summaries: dict[str, list[UnitSummary]],
                    spool: BinaryIO, progress: Callable[..., None]) -> tuple[dict[tuple[str, int], str], int]:
    """Second pass over the chosen contexts; pickle example rows (one list per batch) into
    ``spool`` with the source name and unit index in place of the unit id. Returns the top
    tokens and how many rows were spooled."""
    chosen = _chosen(summaries)
    contexts = sorted({ctx for by_ctx in chosen.values() for ctx in by_ctx})
    context_ids = dict(Context.objects.filter(corpus=run.corpus, index__in=contexts).values_list("index", "id"))
    wanted = {name: {ctx: sorted(units) for ctx, units in by_ctx.items()} for name, by_ctx in chosen.items()}
    tokens = run.corpus.tokenizer.tokens
    top_tokens: dict[tuple[str, int], str] = {}
    token_ids: dict[int, list[int]] = {}
    seen = {"contexts": 0, "rows": 0}
    pending: list[tuple[Any, ...]] = []

    def on_batch(n: int) -> None:
        seen["contexts"] += n
        seen["rows"] += len(pending)
        pickle.dump(pending, spool)
        pending.clear()
        progress(seen["contexts"], len(contexts), "finalizing: second pass over the chosen contexts")

    def chosen_batches() -> Iterator[TokenBatch]:
        for batch in batches(run.corpus, contexts, loaded, config):
            for row, ctx in enumerate(batch.contexts.tolist()):
                token_ids[ctx] = batch.ids[row][batch.attention_mask[row].bool()].tolist()
            yield batch

    for pairs in token_values(loaded.torch_model, loaded.arch, run.model.n_layers, loaded.runtimes, wanted,
                              chosen_batches(), on_batch):
        masked = pairs.values.masked_fill(pairs.invalid, float("-inf"))  # padding, and specials if excluded
        max_pos = masked.argmax(1).tolist()
        packed = pairs.values.clamp(-65504, 65504).numpy().astype("<f2")
        by_unit = chosen[pairs.source]
        for i, (unit, ctx) in enumerate(zip(pairs.units, pairs.contexts, strict=True)):
            ids = token_ids[ctx]
            values_bytes = packed[i, : len(ids)].tobytes()
            for kind, bucket, rank, value in by_unit[ctx][unit]:
                if kind == Example.Kind.TOP and rank == 0:
                    top_tokens[(pairs.source, unit)] = tokens[ids[max_pos[i]]]
                pending.append((pairs.source, unit, kind, bucket, rank, context_ids[ctx], value, max_pos[i],
                                values_bytes))
    seen["rows"] += len(pending)
    pickle.dump(pending, spool)
    spool.seek(0)
    return top_tokens, seen["rows"]


def _unspool(spool: BinaryIO, sources: dict[str, Source],
             unit_ids: dict[tuple[int, int], int]) -> Iterator[tuple[Any, ...]]:
    while True:
        try:
            rows = pickle.load(spool)
        except EOFError:
            return
        for name, u, *rest in rows:
            yield (unit_ids[(sources[name].pk, u)], *rest)


def _logit_effects(run: Run, loaded: Loaded, sources: dict[str, Source]) -> dict[tuple[str, int], dict[str, Any]]:
    if not loaded.arch.causal:
        return {}
    out: dict[tuple[str, int], dict[str, Any]] = {}
    layers = loaded.arch.layers(loaded.torch_model)
    for name, source in sources.items():
        if source.kind == Source.Kind.SAE:
            directions = sae_directions(source, loaded.arch, loaded.torch_model)
        elif source.hook_point.endswith("mlp.hook_post"):
            directions = loaded.arch.neuron_directions(layers[source.layer])
        else:
            continue
        for u, effect in enumerate(logit_effects(loaded.torch_model, loaded.arch, directions)):
            out[(name, u)] = effect
    return out

