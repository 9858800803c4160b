"""Harvest runs: create the run and its shards, process shards on workers, finalize.

Workers share nothing but PostgreSQL and Redis: a shard's partial state goes to a Blob, and the
finalize step merges every shard's state exactly, runs a second pass over the chosen contexts for
per-token values, and writes units, statistics and examples with COPY in one transaction.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import socket
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from django.conf import settings
from django.db import connection, transaction
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import source_get_or_create, units_ensure
from browser.core.blobs import blob_delete, blob_read, blob_write
from browser.core.models import Blob
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.examples.services import examples_write, run_results_clear, stats_write, units_set_browse_fields
from browser.runs.models import Job, Run, Shard
from browser.runs.services import (
    FINALIZE_LOCK,
    WATCH_LOCK,
    JobCancelled,
    job_cancel_requested,
    job_create,
    job_finish,
    job_log,
    job_start,
    run_blob_key,
    run_claim_finalize,
    run_delete,
    run_lock,
    run_lock_free,
    run_mark,
    run_progress,
    shard_claim,
    shard_complete,
    shard_heartbeat,
    shard_lease,
    shards_create,
)
from workers.compute import hooks, loading
from workers.compute.config import HarvestConfig, SourceConfig
from workers.compute.correlation import CorrelationAccumulator
from workers.compute.harvest import (
    CorrelationPair,
    SourceRuntime,
    TokenBatch,
    harvest_pass,
    make_batch,
    token_values,
)
from workers.compute.logits import logit_effects
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import UnitAccumulator, UnitSummary, summarize
from workers.pipeline.saes import sae_directions, sae_runtime, sae_source_check

logger = logging.getLogger(__name__)
FETCH_CONTEXTS = 512
# Heartbeats come this often (and at least four times a lease), so a live claim never expires.
HEARTBEAT_EVERY_S = 5.0
UNIT_OFFSET_STRIDE = 1 << 21  # distinct hash inputs per source (at most 2M units a source)


class HarvestInputError(ValueError):
    """A harvest that cannot run as asked; nothing was written."""


# ---- creating a run ----------------------------------------------------------------------------
def harvest_create(*, model: Model, corpus: Corpus, config: HarvestConfig, user: Any = None) -> tuple[Run, bool]:
    """Create (or find) the run for this model, corpus and config. Returns (run, created)."""
    _validate(model, corpus, config)
    config_hash = config.hash()
    existing = Run.objects.filter(model=model, corpus=corpus, config_hash=config_hash).first()
    if existing is not None and existing.status not in {Run.Status.FAILED, Run.Status.CANCELLED}:
        return existing, False
    with transaction.atomic():
        if existing is not None:
            run_delete(run=existing)  # a failed or cancelled run is redone from scratch
        sources = [_source_for(model, s) for s in config.sources]
        job = job_create(kind=Job.Kind.HARVEST, title=f"harvest {model.name} x {corpus.name}",
                         params={}, created_by=user)
        # Shards cover whole batches, so every batch (and its float sums) is the same however
        # many shards there are.
        per_shard = max(config.batch_size, config.shard_contexts // config.batch_size * config.batch_size)
        run = Run.objects.create(
            model=model, corpus=corpus, config=config.to_dict(), config_hash=config_hash,
            status=Run.Status.QUEUED, contexts_total=corpus.n_contexts, job=job, created_by=user,
            n_shards=-(-corpus.n_contexts // per_shard),
        )
        run.sources.set(sources)
        job.params = {"run_id": run.pk}
        job.total = corpus.n_contexts
        job.save(update_fields=["params", "total"])
        shards_create(run=run, n_contexts=corpus.n_contexts, shard_contexts=per_shard)
    return run, True


def _validate(model: Model, corpus: Corpus, config: HarvestConfig) -> None:
    if corpus.status != Corpus.Status.READY:
        raise HarvestInputError(f"corpus {corpus.name!r} is not ready (status: {corpus.status})")
    if corpus.tokenizer_id != model.tokenizer_id:
        raise HarvestInputError(
            f"corpus {corpus.name!r} was tokenized for {corpus.tokenizer_model.name}, whose vocabulary differs "
            f"from {model.name}'s; import it again with --tokenizer {model.name}"
        )
    if corpus.n_contexts == 0:
        raise HarvestInputError(f"corpus {corpus.name!r} has no contexts")
    for source in config.sources:
        hooks.parse_hook(source.hook, model.n_layers)
        if source.sae_id is not None:
            sae_source_check(model, source)


def _source_for(model: Model, config: SourceConfig) -> Source:
    if config.sae_id is not None:
        return sae_source_check(model, config)
    layer, kind = hooks.parse_hook(config.hook, model.n_layers)
    n_units = model.d_mlp if kind == "mlp.hook_post" else model.d_model
    return source_get_or_create(model=model, name=config.name, hook_point=config.hook, layer=layer,
                                kind=Source.Kind.NEURONS, n_units=n_units)


def neuron_sources(hook_names: list[str]) -> tuple[SourceConfig, ...]:
    return tuple(SourceConfig(name=name, hook=name) for name in hook_names)


# ---- the model on this worker ------------------------------------------------------------------
@dataclass
class Loaded:
    torch_model: torch.nn.Module
    arch: hooks.Architecture
    runtimes: list[SourceRuntime]
    special_ids: set[int]
    pad_id: int


def _device(config: HarvestConfig) -> str:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def load_for_run(run: Run, config: HarvestConfig) -> Loaded:
    model = run.model
    arch = hooks.architecture_for(model.config.get("model_type", model.architecture))
    dtype = config.dtype if _device(config) != "cpu" else "float32"
    torch_model = loading.load_torch_model(model.location, Path(settings.CACHE_DIR), arch.causal,
                                           _device(config), dtype)
    runtimes = []
    for i, source in enumerate(config.sources):
        if source.sae_id is not None:
            runtimes.append(sae_runtime(source, i * UNIT_OFFSET_STRIDE, next(torch_model.parameters()).device))
            continue
        layer, kind = hooks.parse_hook(source.hook, model.n_layers)
        n_units = model.d_mlp if kind == "mlp.hook_post" else model.d_model
        runtimes.append(SourceRuntime(source.name, source.hook, n_units, i * UNIT_OFFSET_STRIDE))
    special = set(run.corpus.tokenizer.special_ids) if config.exclude_special else set()
    tok = loading.load_tokenizer(model.location, Path(settings.CACHE_DIR))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Loaded(torch_model, arch, runtimes, special, int(pad))


def _batches(corpus: Corpus, indices: list[int], loaded: Loaded, config: HarvestConfig) -> Iterator[TokenBatch]:
    """Batches of the given context indices (ascending), fetched from PostgreSQL in chunks."""
    special = loaded.special_ids if config.exclude_special else set()
    for start in range(0, len(indices), FETCH_CONTEXTS):
        wanted = indices[start : start + FETCH_CONTEXTS]
        rows = dict(Context.objects.filter(corpus=corpus, index__in=wanted).values_list("index", "tokens"))
        for b in range(0, len(wanted), config.batch_size):
            chunk = wanted[b : b + config.batch_size]
            yield make_batch(chunk, [decode_tokens(bytes(rows[i])) for i in chunk], corpus.context_length,
                             special, config.exclude_special, loaded.pad_id)


# ---- shards ------------------------------------------------------------------------------------
def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def shards_work(*, run_id: int, on_all_done: Callable[[int], None],
                progress: Callable[..., None] | None = None) -> int:
    """Claim and process shards of the run until none is left; returns how many were done here.

    Then one worker per run (the holder of its watch lock) stays: it redoes shards whose worker
    died once their lease expires, and finalizes the run itself if its finalizer died, so a run
    completes while any worker that took one of its tasks is alive. The others return.
    """
    run = Run.objects.select_related("model", "corpus", "corpus__tokenizer").get(pk=run_id)
    if run.status not in {Run.Status.QUEUED, Run.Status.HARVESTING, Run.Status.FINALIZING}:
        return 0
    Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(status=Run.Status.HARVESTING)
    if run.job_id:
        job_start(job_id=run.job_id)
    config = HarvestConfig.from_dict(run.config)
    with run_lock(run_id=run.pk, kind=WATCH_LOCK) as watcher:
        return _claim_loop(run, config, watcher, on_all_done, progress)


def _claim_loop(run: Run, config: HarvestConfig, watcher: bool, on_all_done: Callable[[int], None],
                progress: Callable[..., None] | None) -> int:
    loaded: Loaded | None = None
    done = 0
    while True:
        _raise_if_cancelled(run)
        shard = shard_claim(run_id=run.pk, worker=worker_name())
        if shard is not None:
            loaded = loaded or load_for_run(run, config)
            _note(run, f"{worker_name()} took shard {shard.index} (attempt {shard.attempts})")
            result = _process_shard(run, shard, config, loaded, progress)
            if result is None:
                continue  # the claim was lost to another worker: its result will count, not ours
            partial, correlations = result
            done += 1
            all_done = shard_complete(shard=shard, partial=partial,
                                      on_complete=functools.partial(_merge_correlations, run.pk, correlations))
            run_progress(run=run)
            if all_done:
                on_all_done(run.pk)
            continue
        if not watcher or _fail_if_shards_failed(run) or not _watch(run, progress):
            return done


def _watch(run: Run, progress: Callable[..., None] | None) -> bool:
    """One look at the run by its watcher; False once it needs no more watching."""
    run.refresh_from_db(fields=["status"])
    if run.status not in {Run.Status.QUEUED, Run.Status.HARVESTING, Run.Status.FINALIZING}:
        return False
    all_done = not Shard.objects.filter(run=run).exclude(status=Shard.Status.DONE).exists()
    if all_done and run_lock_free(run_id=run.pk, kind=FINALIZE_LOCK):
        finalize(run_id=run.pk, progress=progress or (lambda *a, **k: None))
        return True
    time.sleep(min(2.0, shard_lease().total_seconds() / 4))
    return True


def _raise_if_cancelled(run: Run) -> None:
    if run.job_id and job_cancel_requested(job_id=run.job_id):
        raise JobCancelled(f"run {run.pk} was cancelled")


def _note(run: Run, line: str) -> None:
    logger.info("run %s: %s", run.pk, line)
    if run.job_id:
        job_log(job_id=run.job_id, line=line)


def _process_shard(run: Run, shard: Shard, config: HarvestConfig, loaded: Loaded, progress: Callable[..., None] | None
                   ) -> tuple[bytes, dict[str, dict[str, torch.Tensor]]] | None:
    """(the accumulators' partial state, the correlation sums' states by pair prefix), or None
    when the claim was lost."""
    accumulators = {rt.name: _accumulator(rt, config, loaded) for rt in loaded.runtimes}
    indices = list(range(shard.start, shard.end))
    counter = {"contexts": 0, "beat": time.monotonic()}
    beat_every = min(HEARTBEAT_EVERY_S, shard_lease().total_seconds() / 4)

    def on_batch(n: int) -> None:
        counter["contexts"] += n
        _raise_if_cancelled(run)  # a cancelled harvest stops at its next batch
        if time.monotonic() - counter["beat"] >= beat_every:
            counter["beat"] = time.monotonic()
            if not shard_heartbeat(shard=shard, contexts_done=int(counter["contexts"])):
                raise _ClaimLost
            done = run_progress(run=run)
            if progress is not None:
                progress(done, run.contexts_total, f"shard {shard.index + 1} of {run.n_shards}")

    correlations = correlation_pairs(loaded.runtimes, config, next(loaded.torch_model.parameters()).device)
    try:
        harvest_pass(loaded.torch_model, loaded.arch, run.model.n_layers, loaded.runtimes, accumulators,
                     _batches(run.corpus, indices, loaded, config), run.corpus.context_length, on_batch,
                     correlations)
    except _ClaimLost:
        _note(run, f"{worker_name()} lost its claim on shard {shard.index} (its lease expired)")
        return None
    tensors = {f"{name}/{key}": t for name, acc in accumulators.items() for key, t in acc.state().items()}
    return st_save(tensors), {_corr_prefix(p.neurons, p.features): p.accumulator.state() for p in correlations}


CORR_PREFIX = "correlation:"
"""Tensors of correlation sums are named ``correlation:NEURONS|FEATURES/field`` in the run's
correlation blob."""
CORR_BLOB = "correlation"


def _corr_prefix(neurons: str, features: str) -> str:
    return f"{CORR_PREFIX}{neurons}|{features}"


def correlation_pairs(runtimes: list[SourceRuntime], config: HarvestConfig,
                      device: torch.device) -> list[CorrelationPair]:
    """One pair per SAE on an ``mlp.hook_post`` hook whose neurons are harvested too."""
    if config.corr_stride == 0:
        return []
    neurons = {rt.hook: rt for rt in runtimes if rt.encode is None and rt.hook.endswith("mlp.hook_post")}
    return [CorrelationPair(neurons[rt.hook].name, rt.name,
                            CorrelationAccumulator(neurons[rt.hook].n_units, rt.n_units, device), config.corr_stride)
            for rt in runtimes if rt.encode is not None and rt.hook in neurons]


def _merge_correlations(run_id: int, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Add a completed shard's correlation sums into the run's one correlation blob (called under
    the run's row lock, once per shard): the run stores one [neurons, features] table per pair,
    however many shards it has."""
    if not states:
        return
    key = run_blob_key(run_id, CORR_BLOB)
    existing = Blob.objects.filter(key=key).first()
    tensors = dict(st_load(blob_read(existing))) if existing is not None else {}
    for prefix, state in states.items():
        merged = CorrelationAccumulator.from_state(state)
        held = _pair_state(tensors, prefix)
        if held:
            merged, shard = CorrelationAccumulator.from_state(held), merged
            merged.merge(shard)
        tensors.update({f"{prefix}/{k}": t for k, t in merged.state().items()})
    if existing is not None:
        blob_delete(blob_ids=[existing.pk])
    blob_write(key=key, data=st_save(tensors))


def merged_correlation(run: Run, neurons: str, features: str) -> CorrelationAccumulator | None:
    """The correlation sums of a run's neuron and SAE sources over all its shards (None when the
    run kept none: an older run, or one harvested with corr_stride 0)."""
    blob = Blob.objects.filter(key=run_blob_key(run.pk, CORR_BLOB)).first()
    if blob is None:
        return None
    state = _pair_state(st_load(blob_read(blob)), _corr_prefix(neurons, features))
    return CorrelationAccumulator.from_state(state) if state else None


def _pair_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """One pair's state out of the run's correlation blob (empty when it has none)."""
    return {k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + "/")}


class _ClaimLost(Exception):
    pass


def _accumulator(rt: SourceRuntime, config: HarvestConfig, loaded: Loaded) -> UnitAccumulator:
    device = next(loaded.torch_model.parameters()).device
    accumulator = SparseUnitAccumulator if rt.sparse else UnitAccumulator
    return accumulator(rt.n_units, k=config.k, samples=config.samples_per_interval,
                       hist_stride=config.hist_stride, seed=config.seed, unit_offset=rt.unit_offset, device=device)


def _fail_if_shards_failed(run: Run) -> bool:
    failed = Shard.objects.filter(run=run, status=Shard.Status.FAILED).first()
    if failed is not None:
        run_mark(run=run, status=Run.Status.FAILED, error=f"shard {failed.index} failed: {failed.error}")
        if run.job_id:
            job_finish(job_id=run.job_id, status=Job.Status.FAILED, error=f"shard {failed.index} failed: {failed.error}")
    return failed is not None


# ---- finalize ----------------------------------------------------------------------------------
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
        _note(run, f"{worker_name()} finalizing")
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

    def batches() -> Iterator[TokenBatch]:
        for batch in _batches(run.corpus, contexts, loaded, config):
            for row, ctx in enumerate(batch.contexts.tolist()):
                token_ids[ctx] = batch.ids[row][batch.attention_mask[row].bool()].tolist()
            yield batch

    for pairs in token_values(loaded.torch_model, loaded.arch, run.model.n_layers, loaded.runtimes, wanted,
                              batches(), on_batch):
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
