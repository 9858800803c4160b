"""Every task fails one way (:func:`guarded`): job tasks through :func:`run_job` (claim the
job, progress, cancel), run tasks through :func:`run_task` (a harvest's shards and finalize).

Bad input (:class:`JobInputError` and any other ``ValueError``, such as ``HarvestInputError`` or
``CorpusInputError``) fails the job at once and is never retried. Transient errors (a lost
database or broker connection, see :func:`is_transient`) are retried with exponential backoff,
``BROWSER_JOB_MAX_ATTEMPTS`` attempts in all, then the job fails with the error recorded. A job
whose worker died at every attempt (redelivered each time) is claimed at most that many times.
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

from browser.runs.models import Job, Run
from browser.runs.services import (
    JobCancelled,
    job_claim,
    job_finish,
    job_log,
    job_progress,
    job_requeue,
    work_end,
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


def run_job(task: Any, job_id: int, work: Callable[[Job, Progress], None], listener: Listener | None = None) -> None:
    """A job task: run ``work`` for the job if this worker can claim it, through :func:`guarded`.

    ``task`` is the bound Celery task (for retries), or None when the job runs in-process. A
    harvest run whose job this is (the command line's ``--inline``) ends with it.
    """

    def body() -> None:
        if not job_claim(job_id=job_id, retries=task.request.retries if task is not None else 0,
                         max_attempts=settings.JOB_MAX_ATTEMPTS):
            return
        work(Job.objects.get(pk=job_id), Progress(job_id, listener))
        job_finish(job_id=job_id, status=Job.Status.SUCCEEDED)

    guarded(task, body, job_id=job_id)


def run_task(task: Any, run_id: int, body: Callable[[], object]) -> None:
    """A run task (a harvest's shards, its finalize): ``body`` through :func:`guarded`, ending
    the run and its job as one."""
    guarded(task, body, job_id=None, run_id=run_id)


def guarded(task: Any, body: Callable[[], object], *, job_id: int | None, run_id: int | None = None) -> None:
    """The one failure path of every task: a cancel ends the job (and run) cancelled; bad input
    (``ValueError``) fails it at once with its message; a transient error is retried with backoff
    while attempts are left; anything else fails it with the traceback and is re-raised for the
    worker's log. Attempts are capped: a task's retries, a job's claims, a shard's claims.

    A run's job (``job_id`` None with a ``run_id``) is looked up when it is needed, once the
    database is back if it was what failed."""
    if task is not None:  # a worker's connection may have gone stale between tasks
        close_old_connections()
    try:
        body()
    except JobCancelled:
        _end(job_id, run_id, "cancelled", "", "cancelled")
    except ValueError as exc:
        _end(job_id, run_id, "failed", str(exc), f"failed: {type(exc).__name__}: {str(exc)[:300]}")
    except Exception as exc:
        if may_retry(task, exc):
            retry(task, exc, job_id if job_id is not None or run_id is None else _job_id(run_id))
        _end(job_id, run_id, "failed", "".join(traceback.format_exception(exc)),
             f"failed: {type(exc).__name__}: {str(exc)[:300]}")
        raise


def _end(job_id: int | None, run_id: int | None, status: str, error: str, line: str) -> None:
    """Record how the work ended, best effort: the database may be what failed."""
    try:
        if job_id is None and run_id is not None:
            job_id = _job_id(run_id)
        work_end(job_id=job_id, run_id=run_id, status=status, error=error)
        if job_id is not None:
            job_log(job_id=job_id, line=line)
    except Exception:
        logger.exception("could not record the end of job %s (run %s)", job_id, run_id)


def _job_id(run_id: int) -> int | None:
    try:
        return Run.objects.filter(pk=run_id).values_list("job_id", flat=True).first()
    except Exception:  # the database may be what failed: the body will meet it too
        return None
