"""One failure path for every task (issue 14 item 5): routes name real tasks, a job whose
worker died at every attempt is failed after the attempt cap instead of being run again, and a
run task fails its run and job as the in-process job does."""

from __future__ import annotations

import io
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.corpora.services import corpus_import
from browser.runs.models import Job, Run
from browser.runs.services import job_create
from fixtures.tiny import build_tiny_bert
from tests.conftest import FIXTURE_CORPUS
from workers.celery import ROUTES, app
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_register


def test_every_route_names_a_registered_task() -> None:
    app.loader.import_default_modules()  # what a worker imports when it starts: every task module
    assert set(ROUTES) - set(app.tasks) == set()


def test_a_job_whose_worker_died_at_every_attempt_is_failed_not_run_again(transactional_db: None, minilm: Model) -> None:
    from workers.tasks import tokenize_corpus

    corpus = corpus_import(name="c", path=FIXTURE_CORPUS, tokenizer_model=minilm, context_length=64)
    job = job_create(kind=Job.Kind.TOKENIZE, title="tokenize c", params={"corpus_id": corpus.pk})
    # What the table holds after JOB_MAX_ATTEMPTS deliveries whose worker was killed mid-task:
    # running, claimed that many times, no heartbeat for longer than a lease.
    stale = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=settings.JOB_MAX_ATTEMPTS,
                                         heartbeat=stale, started=stale)
    tokenize_corpus.apply(args=[job.pk])  # the broker delivers it once more
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert f"gave up after {settings.JOB_MAX_ATTEMPTS} attempts" in job.error
    assert job.attempts == settings.JOB_MAX_ATTEMPTS
    corpus.refresh_from_db()
    assert corpus.status != Corpus.Status.READY  # not tokenized again


def test_a_job_below_the_cap_is_still_taken_over(transactional_db: None, minilm: Model) -> None:
    from workers.tasks import tokenize_corpus

    corpus = corpus_import(name="d", path=FIXTURE_CORPUS, tokenizer_model=minilm, context_length=64)
    job = job_create(kind=Job.Kind.TOKENIZE, title="tokenize d", params={"corpus_id": corpus.pk})
    stale = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=settings.JOB_MAX_ATTEMPTS - 1,
                                         heartbeat=stale, started=stale)
    tokenize_corpus.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.attempts == settings.JOB_MAX_ATTEMPTS


@pytest.mark.parametrize("path", ["task", "inline"])
def test_a_run_task_and_a_job_fail_the_same_way(transactional_db: None, tmp_path: Path, path: str) -> None:
    """A run whose model vanished after it was created: queued (the shard task) or in-process
    (the harvest job), the run and its job end failed with the loader's message."""
    from workers.cli import run_here
    from workers.tasks import harvest_shards, harvest_work

    location = build_tiny_bert(tmp_path / "tiny")
    model = model_register(location=str(location), name="gone")
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question. " * 20)
    call_command("import_corpus", str(tmp_path / "t.txt"), name="t", context_length=16, tokenizer="gone",
                 inline=True, stdout=io.StringIO())
    config = HarvestConfig(sources=neuron_sources(["blocks.0.mlp.hook_post"]), k=4)
    run, _ = harvest_create(model=model, corpus=Corpus.objects.get(name="t"), config=config)
    shutil.rmtree(location)
    if path == "task":
        harvest_shards.apply(args=[run.pk])
    else:
        with pytest.raises(CommandError):
            run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    run.refresh_from_db()
    job = Job.objects.get(pk=run.job_id)
    assert (run.status, job.status) == (Run.Status.FAILED, Job.Status.FAILED)
    assert run.error == job.error == f"no model at {location} (no such file or directory)"
    assert f"failed: ModelLoadError: no model at {location}" in job.log
