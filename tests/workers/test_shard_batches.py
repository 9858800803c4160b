"""A run in N shards equals the run in one shard, row for row, for a batch size that does not
divide the fetch size (issue 14 item 4), with SAE features (whose sums are rounded once per
batch) and neurons; and what the config hash covers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_sae import random_sae
from tests.harvesting import run_rows
from workers.cli import run_here
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register, sae_sources
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_post"  # the tiny BERT: 48 neurons a layer
BATCH = 24  # does not divide the 512 contexts fetched at a time


@pytest.fixture
def tiny(db: None, tmp_path: Path) -> Model:
    model = model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")
    sae_register(model=model, name="feat", sae=random_sae(48, 64, architecture="topk", k=8, seed=5, hook_name=HOOK))
    return model


@pytest.fixture
def big_corpus(tiny: Model, tmp_path: Path) -> Corpus:
    """More than 512 contexts of 16 tokens, so a one-shard run fetches twice."""
    from django.core.management import call_command

    from tests.texts import TEXTS

    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 110))
    call_command("import_corpus", str(folder), name="many", context_length=16, tokenizer="tiny", inline=True,
                 stdout=io.StringIO())
    corpus = Corpus.objects.get(name="many")
    assert corpus.n_contexts > 600
    return corpus


def harvest_run(model: Model, corpus: Corpus, shard_contexts: int) -> Run:
    config = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(model, ["feat"]), k=4,
                           samples_per_interval=3, n_intervals=4, hist_stride=3, batch_size=BATCH,
                           shard_contexts=shard_contexts)
    run, created = harvest_create(model=model, corpus=corpus, config=config)
    assert created
    run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    return run


def test_shards_equal_one_run_when_the_batch_size_does_not_divide_the_fetch(tiny: Model, big_corpus: Corpus) -> None:
    one = harvest_run(tiny, big_corpus, shard_contexts=4096)
    rows_one = run_rows(one)
    one.delete()
    # 250 rounds down to 240 (whole batches): shard starts 240, 480, ... are not multiples of 512.
    many = harvest_run(tiny, big_corpus, shard_contexts=250)
    assert one.n_shards == 1 and many.n_shards >= 3
    assert run_rows(many) == rows_one


def test_the_hash_covers_what_changes_results_and_only_that() -> None:
    base = HarvestConfig(sources=neuron_sources([HOOK]))
    # Results may change with the batch (which contexts share a forward pass and an SAE batch sum)
    # and the device: both are in the hash. Shards cut at whole batches change nothing: not in it.
    assert HarvestConfig(sources=base.sources, batch_size=24).hash() != base.hash()
    assert HarvestConfig(sources=base.sources, device="cpu").hash() != base.hash()
    assert HarvestConfig(sources=base.sources, shard_contexts=96).hash() == base.hash()
