"""Running a Job inside a Celery task: claim, progress, cancel, bounded retries, clear errors.

Bad input (:class:`JobInputError` and other ``ValueError``) fails the job at once and is never
retried. Transient errors (a lost database or broker connection) are retried with backoff, at
most ``MAX_ATTEMPTS`` times, then the job fails with the error recorded.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError, close_old_connections

from browser.runs.models import Job
from browser.runs.services import JobCancelled, job_claim, job_finish, job_log, job_progress, job_requeue

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
PROGRESS_EVERY_S = 1.0


class JobInputError(ValueError):
    """The job's input is bad; retrying cannot help."""


Listener = Callable[[int, "int | None", "str | None"], None]


class Progress:
    """Throttled progress reports to the Job row; each one may raise JobCancelled.

    A listener (the command line's progress bar when a job runs in-process) hears every report.
    """

    def __init__(self, job_id: int, listener: Listener | None = None) -> None:
        self.job_id = job_id
        self.listener = listener
        self._last = 0.0

    def __call__(self, done: int, total: int | None = None, message: str | None = None, force: bool = False) -> None:
        if self.listener is not None:
            self.listener(done, total, message)
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            job_progress(job_id=self.job_id, done=done, total=total, message=message)

    def log(self, line: str) -> None:
        logger.info("job %s: %s", self.job_id, line)
        job_log(job_id=self.job_id, line=line)


def _transient(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, OperationalError | DjangoInterfaceError | redis.ConnectionError | ConnectionError)


def run_job(task: Any, job_id: int, work: Callable[[Job, Progress], None], listener: Listener | None = None) -> None:
    """Run ``work`` for the job if this worker can claim it; record how it ended.

    ``task`` is the bound Celery task (for retries), or None when the job runs in-process.
    """
    if task is not None:  # a worker's connection may have gone stale between tasks
        close_old_connections()
    if not job_claim(job_id=job_id):
        return
    job = Job.objects.get(pk=job_id)
    progress = Progress(job_id, listener)
    try:
        work(job, progress)
    except JobCancelled:
        job_finish(job_id=job_id, status=Job.Status.CANCELLED)
    except ValueError as exc:
        job_finish(job_id=job_id, status=Job.Status.FAILED, error=str(exc))
    except Exception as exc:
        if task is not None and _transient(exc) and job.attempts < MAX_ATTEMPTS:
            _retry(task, job, exc)
            return
        job_finish(job_id=job_id, status=Job.Status.FAILED, error="".join(traceback.format_exception(exc)))
        raise
    else:
        job_finish(job_id=job_id, status=Job.Status.SUCCEEDED)


def _retry(task: Any, job: Job, exc: Exception) -> None:
    delay = min(60, 2**job.attempts)
    close_old_connections()
    try:
        job_requeue(job_id=job.pk, error=f"attempt {job.attempts} failed ({exc}); retrying in {delay} s")
    except Exception:  # the database may still be down: the redelivered task reclaims the job
        logger.exception("could not record the retry of job %s", job.pk)
    raise task.retry(exc=exc, countdown=delay, max_retries=MAX_ATTEMPTS)
