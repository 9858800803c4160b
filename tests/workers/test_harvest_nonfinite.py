"""A model that produces NaN fails its harvest run at once, with the hook and context named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from safetensors.torch import load_file, save_file

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.examples.models import Example
from browser.runs.models import Job, Run
from fixtures.tiny import build_tiny_bert
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow


@pytest.fixture
def broken(db: None, tmp_path: Path) -> Model:
    """The tiny BERT with one NaN bias: layer 1's neuron 5 is NaN on every token."""
    folder = build_tiny_bert(tmp_path / "broken")
    weights = load_file(str(folder / "model.safetensors"))
    weights["encoder.layer.1.intermediate.dense.bias"][5] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model_register(location=str(folder), name="broken")


def test_a_nan_fails_the_run_naming_the_hook_and_context(broken: Model, corpus: Corpus) -> None:
    config = HarvestConfig(sources=neuron_sources(["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]), k=4,
                           batch_size=8)
    run, _ = harvest_create(model=broken, corpus=corpus, config=config)
    with pytest.raises(CommandError, match="non-finite activation"):
        run_here(harvest_work, run.job, io.StringIO())
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "at hook blocks.1.mlp.hook_post (source blocks.1.mlp.hook_post) in context 0, unit 5" in run.error
    assert run.job is not None and run.job.status == Job.Status.FAILED and run.job.attempts <= 1
    assert not Example.objects.filter(run=run).exists()
