"""A real Celery worker process, the real broker, the real database."""

from __future__ import annotations

import subprocess
import time

import pytest

from browser.catalog.models import Model
from browser.corpora.models import Context, Corpus
from browser.corpora.services import corpus_import
from browser.runs.models import Job
from browser.runs.services import job_create
from tests.conftest import FIXTURE_CORPUS
from workers.tasks import tokenize_corpus

pytestmark = pytest.mark.slow


def _wait(job: Job, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in {Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED}:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job.pk} still {job.status} after {timeout} s")


def test_worker_tokenizes_a_corpus(worker: subprocess.Popen[bytes], minilm: Model) -> None:
    corpus = corpus_import(name="w", path=FIXTURE_CORPUS, tokenizer_model=minilm, context_length=64)
    job = job_create(kind=Job.Kind.TOKENIZE, title="tokenize w", params={"corpus_id": corpus.pk})
    tokenize_corpus.apply_async(args=[job.pk])
    job = _wait(job)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert job.done == job.total == 20
    corpus.refresh_from_db()
    assert corpus.status == Corpus.Status.READY
    assert Context.objects.filter(corpus=corpus).count() == corpus.n_contexts > 100
    assert job.attempts == 1


def test_worker_harvests_a_run_in_shards(worker: subprocess.Popen[bytes], minilm: Model) -> None:
    import io

    from django.core.management import call_command

    from browser.catalog.models import Unit
    from browser.runs.models import Run, Shard

    corpus_import(name="h", path=FIXTURE_CORPUS, tokenizer_model=minilm, context_length=64)
    job = job_create(kind=Job.Kind.TOKENIZE, title="tokenize h", params={"corpus_id": Corpus.objects.get(name="h").pk})
    tokenize_corpus.apply_async(args=[job.pk])
    assert _wait(job).status == Job.Status.SUCCEEDED
    out = io.StringIO()
    call_command("harvest", model="minilm-l6", corpus="h", hooks="blocks.1.mlp.hook_post", k=8,
                 shard_contexts=160, wait=True, stdout=out)
    run = Run.objects.get()
    assert run.status == Run.Status.DONE, run.error
    assert run.n_shards == 3
    assert set(Shard.objects.filter(run=run).values_list("status", flat=True)) == {Shard.Status.DONE}
    assert run.job is not None and run.job.status == Job.Status.SUCCEEDED
    assert run.contexts_done == run.contexts_total
    assert Unit.objects.filter(source__name="blocks.1.mlp.hook_post", stats_run=run).count() == 1536
