"""Harvest helpers shared by the test modules: a small harvest run through the product's own
task, and a run's rows (statistics and examples) in a comparable order."""

from __future__ import annotations

import io

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.tasks import harvest_work


def harvest_run(model: Model, corpus: Corpus, hook_names: list[str], **kw: object) -> Run:
    """Harvest the neurons at ``hook_names`` with small settings, in this process, to the end."""
    kw = {"batch_size": 8, **kw}
    config = HarvestConfig(sources=neuron_sources(hook_names), k=4, samples_per_interval=3,
                           n_intervals=4, hist_stride=3, **kw)  # type: ignore[arg-type]
    run, created = harvest_create(model=model, corpus=corpus, config=config)
    assert created and run.job is not None
    run_here(harvest_work, run.job, io.StringIO())
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return run


def run_rows(run: Run) -> list[tuple[object, ...]]:
    """Every statistics and example row of the run, ordered, with byte columns as bytes."""
    stats = list(UnitStats.objects.filter(run=run).order_by("unit_id").values_list(
        "unit_id", "n_tokens", "fire_count", "density", "mean", "max", "hist"))
    examples = list(Example.objects.filter(run=run).order_by("unit_id", "kind", "bucket", "rank").values_list(
        "unit_id", "kind", "bucket", "rank", "context_id", "max_value", "max_pos", "values"))
    return [(*s[:-1], bytes(s[-1])) for s in stats] + [(*e[:-1], bytes(e[-1])) for e in examples]
