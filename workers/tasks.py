"""Celery tasks: ids in, the work done by pipeline services, the outcome on the Job row.

Each task is a thin wrapper around a module-level *work* function ``(job, progress) -> None``,
which the command line can also run in-process (see ``workers.cli``).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.corpora.services import corpus_mark_failed
from browser.runs.models import Job, Run
from browser.runs.services import JobCancelled, job_finish, run_mark
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


def _end_run(run_id: int, status: str, error: str = "") -> None:
    run = Run.objects.get(pk=run_id)
    run_mark(run=run, status=status, error=error)
    if run.job_id:
        job_status = {Run.Status.CANCELLED: Job.Status.CANCELLED, Run.Status.FAILED: Job.Status.FAILED}[status]
        job_finish(job_id=run.job_id, status=job_status, error=error)


def harvest_work(job: Job, progress: Progress) -> None:
    """The whole harvest in one process: every shard, then finalize (the command line's --inline)."""
    from workers.pipeline.harvest import finalize, shards_work

    run_id = int(job.params["run_id"])  # type: ignore[call-overload]
    try:
        shards_work(run_id=run_id, on_all_done=lambda _: None, progress=progress)
        finalize(run_id=run_id, progress=progress)
    except JobCancelled:
        run_mark(run=Run.objects.get(pk=run_id), status=Run.Status.CANCELLED)
        raise
    except Exception as exc:
        run_mark(run=Run.objects.get(pk=run_id), status=Run.Status.FAILED, error=str(exc))
        raise


@shared_task(bind=True, name="workers.tasks.harvest_shards")
def harvest_shards(self: Any, run_id: int) -> None:
    """Claim and process shards of the run until none is left; the last one queues finalize."""
    from workers.pipeline.harvest import shards_work

    try:
        shards_work(run_id=run_id, on_all_done=lambda rid: finalize_run.apply_async(args=[rid]))
    except JobCancelled:
        _end_run(run_id, Run.Status.CANCELLED)
    except ValueError as exc:
        _end_run(run_id, Run.Status.FAILED, str(exc))


@shared_task(bind=True, name="workers.tasks.finalize_run")
def finalize_run(self: Any, run_id: int) -> None:
    from workers.pipeline.harvest import finalize

    run = Run.objects.get(pk=run_id)
    progress = Progress(run.job_id) if run.job_id else (lambda *a, **k: None)
    try:
        finalize(run_id=run_id, progress=progress)
    except Exception as exc:
        _end_run(run_id, Run.Status.FAILED, f"finalize failed: {exc}")
        raise
    if run.job_id:
        job_finish(job_id=run.job_id, status=Job.Status.SUCCEEDED)


def train_sae_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.sae_train import sae_train_work

    sae_train_work(job, progress)


@shared_task(bind=True, name="workers.tasks.train_sae")
def train_sae(self: Any, job_id: int) -> None:
    """Train an SAE and register it (see ``workers.pipeline.sae_train``)."""
    run_job(self, job_id, train_sae_work)
