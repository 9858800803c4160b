"""Running a Job inside a Celery task: claim, progress, cancel, bounded retries, clear errors.

Bad input (:class:`JobInputError` and any other ``ValueError``, such as ``HarvestInputError`` or
``CorpusInputError``) fails the job at once and is never retried. Transient errors (a lost
database or broker connection, see :func:`is_transient`) are retried with exponential backoff,
``BROWSER_JOB_MAX_ATTEMPTS`` attempts in all, then the job fails with the error recorded.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from django.conf import settings
from django.db import InterfaceError as DjangoInterfaceError
from django.db import OperationalError, close_old_connections

from browser.runs.models import Job
from browser.runs.services import (
    JobCancelled,
    job_claim,
    job_finish,
    job_log,
    job_progress,
    job_requeue,
    runs_stalled,
)

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0
MAX_BACKOFF_S = 60


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


def is_transient(exc: BaseException) -> bool:
    """A lost connection to PostgreSQL or Redis: the same work may succeed once it is back."""
    import psycopg
    import redis
    from kombu.exceptions import OperationalError as KombuOperationalError

    transient = (OperationalError, DjangoInterfaceError, psycopg.OperationalError, psycopg.InterfaceError,
                 redis.ConnectionError, redis.TimeoutError, KombuOperationalError, ConnectionError)
    return isinstance(exc, transient)


def backoff_s(attempt: int) -> int:
    """Seconds to wait before attempt ``attempt + 1`` (1-based): 2, 4, 8 ... at most a minute."""
    return int(min(MAX_BACKOFF_S, 2**attempt))


def may_retry(task: Any, exc: BaseException) -> bool:
    """Whether a task that failed with ``exc`` should be retried (transient, attempts left)."""
    return task is not None and is_transient(exc) and task.request.retries + 1 < settings.JOB_MAX_ATTEMPTS


def retry(task: Any, exc: BaseException, job_id: int | None) -> NoReturn:
    """Retry the task after a backoff, noting it on the job when the database allows."""
    attempt = task.request.retries + 1
    delay = backoff_s(attempt)
    close_old_connections()
    if job_id is not None:
        note = f"attempt {attempt} of {settings.JOB_MAX_ATTEMPTS} failed ({type(exc).__name__}: {exc}); retrying in {delay} s"
        try:
            job_requeue(job_id=job_id, error=note)
            job_log(job_id=job_id, line=note)
        except Exception:  # the database may still be down: the retried task reclaims the job
            logger.warning("could not record the retry of job %s", job_id)
    raise task.retry(exc=exc, countdown=delay, max_retries=settings.JOB_MAX_ATTEMPTS)


def fail(job_id: int, exc: BaseException, *, input_error: bool) -> None:
    """Record the failure on the job, best effort: the database may be what failed."""
    error = str(exc) if input_error else "".join(traceback.format_exception(exc))
    try:
        job_finish(job_id=job_id, status=Job.Status.FAILED, error=error)
        job_log(job_id=job_id, line=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
    except Exception:
        logger.exception("could not record the failure of job %s", job_id)


def run_job(task: Any, job_id: int, work: Callable[[Job, Progress], None], listener: Listener | None = None) -> None:
    """Run ``work`` for the job if this worker can claim it; record how it ended.

    ``task`` is the bound Celery task (for retries), or None when the job runs in-process.
    """
    if task is not None:  # a worker's connection may have gone stale between tasks
        close_old_connections()
    try:
        if not job_claim(job_id=job_id, retries=task.request.retries if task is not None else 0):
            return
        job = Job.objects.get(pk=job_id)
        work(job, Progress(job_id, listener))
    except JobCancelled:
        job_finish(job_id=job_id, status=Job.Status.CANCELLED)
        job_log(job_id=job_id, line="cancelled")
        return
    except ValueError as exc:
        fail(job_id, exc, input_error=True)
        return
    except Exception as exc:
        if may_retry(task, exc):
            retry(task, exc, job_id)
        fail(job_id, exc, input_error=False)
        raise
    job_finish(job_id=job_id, status=Job.Status.SUCCEEDED)


def resume_stalled_runs(run_ids: list[int] | None = None) -> list[int]:
    """Queue a harvest task for every stalled run (see ``runs_stalled``); any worker or follower
    may call this at any time: a task too many finds nothing to claim and ends."""
    from workers.tasks import harvest_shards

    stalled = [r for r in runs_stalled() if run_ids is None or r in run_ids]
    for run_id in stalled:
        harvest_shards.apply_async(args=[run_id])
        logger.warning("run %s had stalled; queued its work again", run_id)
    return stalled
