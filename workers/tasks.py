"""Celery tasks: ids in, the work done by pipeline services, the outcome on the Job row.

Each task is a thin wrapper around a module-level *work* function ``(job, progress) -> None``,
which the command line can also run in-process (see ``workers.cli``).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.corpora.services import corpus_mark_failed
from browser.runs.models import Job
from workers.jobs import Progress, run_job


def tokenize_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.corpora import corpus_tokenize

    corpus_id = int(job.params["corpus_id"])  # type: ignore[call-overload]
    try:
        corpus_tokenize(corpus_id=corpus_id, progress=progress)
    except ValueError as exc:
        corpus_mark_failed(corpus_id=corpus_id, error=str(exc))
        raise


@shared_task(bind=True, name="workers.tasks.tokenize_corpus")
def tokenize_corpus(self: Any, job_id: int) -> None:
    run_job(self, job_id, tokenize_work)
