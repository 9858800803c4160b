"""One failure path for every task (issue 14 item 5): routes name real tasks, and a job whose
worker died at every attempt is failed after the attempt cap instead of being run again."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.corpora.services import corpus_import
from browser.runs.models import Job
from browser.runs.services import job_create
from tests.conftest import FIXTURE_CORPUS
from workers.celery import ROUTES, app


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
