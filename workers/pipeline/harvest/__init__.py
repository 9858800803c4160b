"""Harvest runs, one room per job: ``create`` (runs and shards from a request), ``runtime`` (the
run's model and batches on a worker), ``shards`` (the claim loop, heartbeats and the watcher),
``correlations`` (the run's correlation blob) and ``finalize`` (merge, display values, COPY)."""

from __future__ import annotations

from workers.pipeline.harvest.correlations import correlation_pairs, merged_correlation
from workers.pipeline.harvest.create import HarvestInputError, harvest_create, neuron_sources
from workers.pipeline.harvest.finalize import finalize, merged_states
from workers.pipeline.harvest.runtime import UNIT_OFFSET_STRIDE, load_for_run
from workers.pipeline.harvest.shards import shards_work

__all__ = ["UNIT_OFFSET_STRIDE", "HarvestInputError", "correlation_pairs", "finalize", "harvest_create",
           "load_for_run", "merged_correlation", "merged_states", "neuron_sources", "shards_work"]
