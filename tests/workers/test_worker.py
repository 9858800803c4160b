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
