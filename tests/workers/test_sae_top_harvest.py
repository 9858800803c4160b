"""A TopK SAE harvested from its top-k codes (no correlation reads its dense codes) writes the same
rows as when the pass makes the dense codes for its correlation with the neurons (the path the
brute-force test in test_sae.py checks): statistics and every example, values and max position
included, bit for bit, over several shards (whose partials store the kept values packed)."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from fixtures.tiny_sae import random_sae
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.saes import sae_register, sae_sources
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_post"  # the tiny BERT: 48 neurons a layer


def _harvest(model: Model, corpus: Corpus, config: HarvestConfig) -> Run:
    run, created = harvest_create(model=model, corpus=corpus, config=config)
    assert created
    run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return run


def _rows(run: Run) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    stats = UnitStats.objects.filter(run=run, unit__source__name="feat").order_by("unit__index").values_list(
        "unit__index", "n_tokens", "fire_count", "density", "mean", "max", "hist")
    examples = Example.objects.filter(run=run, unit__source__name="feat").order_by(
        "unit__index", "kind", "bucket", "rank").values_list(
        "unit__index", "kind", "bucket", "rank", "context_id", "max_value", "max_pos", "values")
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in stats], \
        [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in examples]


def test_top_codes_write_the_rows_of_the_dense_codes(tiny: Model, corpus: Corpus) -> None:
    sae_register(model=tiny, name="feat", sae=random_sae(48, 64, architecture="topk", k=8, seed=5, hook_name=HOOK))
    dense = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(tiny, ["feat"]), k=4, samples_per_interval=3,
                          n_intervals=4, hist_stride=3, batch_size=4, shard_contexts=8, corr_stride=2)
    want = _rows(_harvest(tiny, corpus, dense))
    got = _rows(_harvest(tiny, corpus, replace(dense, corr_stride=0)))
    assert len(want[1]) > 100
    assert got[0] == want[0]
    assert got[1] == want[1]
