"""`bench load` waits for the worker's follow-up jobs between its phases (issue 14 item 15): a
finished harvest queues its sources' search vectors on the same worker, minutes of CPU each, and
before this wait the "idle" phase ran beside them and the loaded harvest queued behind them (its
time then counted the wait, and a phase could pass the bench's time limit with the harvest not
even started)."""

from __future__ import annotations

import threading
import time

import pytest
from django.utils import timezone

from browser.runs.models import Job
from browser.runs.services import job_create, job_finish
from workers.bench.load import worker_settle


@pytest.mark.django_db(transaction=True)
def test_settle_waits_for_the_jobs_queued_since_and_only_those() -> None:
    older = job_create(kind=Job.Kind.SCORE, title="someone else's job, queued before the bench")
    since = timezone.now()
    assert worker_settle(since, limit_s=5) < 1.0  # nothing of ours: no wait
    job = job_create(kind=Job.Kind.SCORE, title="search vectors of the harvested source")
    timer = threading.Timer(1.5, lambda: job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED))
    timer.start()
    start = time.monotonic()
    waited = worker_settle(since, limit_s=30)
    assert time.monotonic() - start >= 1.4 and waited >= 1.4
    assert Job.objects.get(pk=job.pk).status == Job.Status.SUCCEEDED
    job_create(kind=Job.Kind.SCORE, title="stuck")
    with pytest.raises(RuntimeError, match="stuck"):
        worker_settle(since, limit_s=1.5)
    assert Job.objects.get(pk=older.pk).status == Job.Status.QUEUED
