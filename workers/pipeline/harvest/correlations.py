"""The run's correlation sums: one blob per run, each completed shard's sums merged into it."""

from __future__ import annotations

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from browser.core.models import Blob
from browser.core.selectors import blob_read
from browser.core.services import blob_delete, blob_write
from browser.runs.models import Run
from browser.runs.services import run_blob_key
from workers.compute.config import HarvestConfig
from workers.compute.correlation import CorrelationAccumulator
from workers.compute.harvest import CorrelationPair, SourceRuntime

CORR_PREFIX = "correlation:"
"""Tensors of correlation sums are named ``correlation:NEURONS|FEATURES/field`` in the run's
correlation blob."""
CORR_BLOB = "correlation"


def pair_prefix(neurons: str, features: str) -> str:
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


def merge_correlations(run_id: int, states: dict[str, dict[str, torch.Tensor]]) -> None:
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
    state = _pair_state(st_load(blob_read(blob)), pair_prefix(neurons, features))
    return CorrelationAccumulator.from_state(state) if state else None


def _pair_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """One pair's state out of the run's correlation blob (empty when it has none)."""
    return {k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + "/")}


