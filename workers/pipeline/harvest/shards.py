"""The shard loop: load the run's model, claim a shard, keep its lease alive, harvest it, store
its partial state.

One worker per run stays to watch (its watch lock): it redoes shards whose worker died and
finalizes the run if its finalizer died."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from safetensors.torch import save as st_save

from browser.runs.models import Job, Run, Shard
from browser.runs.services import (
    FINALIZE_LOCK,
    WATCH_LOCK,
    job_finish,
    job_start,
    run_lock,
    run_lock_free,
    run_mark,
    run_progress,
    run_start,
    shard_claim,
    shard_claimable,
    shard_complete,
    shard_heartbeat,
    shard_lease,
)
from workers.compute.config import HarvestConfig
from workers.compute.harvest import SourceRuntime, harvest_pass
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import UnitAccumulator
from workers.pipeline.harvest.correlations import correlation_pairs, merge_correlations, pair_prefix
from workers.pipeline.harvest.finalize import finalize
from workers.pipeline.harvest.partials import pack
from workers.pipeline.harvest.runtime import (
    Loaded,
    batches,
    load_for_run,
    note,
    raise_if_cancelled,
    worker_name,
)

# Heartbeats come this often (and at least four times a lease), so a live claim never expires.
HEARTBEAT_EVERY_S = 5.0


def shards_work(*, run_id: int, on_all_done: Callable[[int], None],
                progress: Callable[..., None] | None = None) -> int:
    """Claim and process shards of the run until none is left; returns how many were done here.

    Then one worker per run (the holder of its watch lock) stays: it redoes shards whose worker
    died once their lease expires, and finalizes the run itself if its finalizer died, so a run
    completes while any worker that took one of its tasks is alive. The others return.
    """
    run = Run.objects.select_related("model", "corpus", "corpus__tokenizer").filter(pk=run_id).first()
    if run is None or run.status not in {Run.Status.QUEUED, Run.Status.HARVESTING, Run.Status.FINALIZING}:
        return 0  # deleted (a task queued before), finished or given up: nothing to do
    run_start(run_id=run.pk)
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
        raise_if_cancelled(run)
        if loaded is None and shard_claimable(run_id=run.pk, worker=worker_name()):
            # Load before claiming: a lease starts once the model is ready, so a load longer
            # than the lease (a first GGUF conversion) loses no shard and counts no attempt.
            loaded = load_for_run(run, config)
        shard = shard_claim(run_id=run.pk, worker=worker_name()) if loaded is not None else None
        if shard is not None and loaded is not None:
            note(run, f"{worker_name()} took shard {shard.index} (attempt {shard.attempts})")
            result = _process_shard(run, shard, config, loaded, progress)
            if result is None:
                continue  # the claim was lost to another worker: its result will count, not ours
            partial, correlations = result
            done += 1
            all_done = shard_complete(shard=shard, partial=partial,
                                      on_complete=functools.partial(merge_correlations, run.pk, correlations))
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
        raise_if_cancelled(run)  # a cancelled harvest stops at its next batch
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
                     batches(run.corpus, indices, loaded, config), run.corpus.context_length, on_batch,
                     correlations)
    except _ClaimLost:
        note(run, f"{worker_name()} lost its claim on shard {shard.index} (its lease expired)")
        return None
    tensors = {f"{name}/{key}": t for name, acc in accumulators.items() for key, t in pack(acc.state()).items()}
    return st_save(tensors), {pair_prefix(p.neurons, p.features): p.accumulator.state() for p in correlations}



class _ClaimLost(Exception):
    pass


def _accumulator(rt: SourceRuntime, config: HarvestConfig, loaded: Loaded) -> UnitAccumulator:
    device = next(loaded.torch_model.parameters()).device
    accumulator = SparseUnitAccumulator if rt.sparse else UnitAccumulator
    return accumulator(rt.n_units, k=config.k, samples=config.samples_per_interval,
                       hist_stride=config.hist_stride, seed=config.seed, unit_offset=rt.unit_offset, device=device,
                       n_intervals=config.n_intervals)


def _fail_if_shards_failed(run: Run) -> bool:
    failed = Shard.objects.filter(run=run, status=Shard.Status.FAILED).first()
    if failed is not None:
        run_mark(run=run, status=Run.Status.FAILED, error=f"shard {failed.index} failed: {failed.error}")
        if run.job_id:
            job_finish(job_id=run.job_id, status=Job.Status.FAILED, error=f"shard {failed.index} failed: {failed.error}")
    return failed is not None

