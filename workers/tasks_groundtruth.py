"""Celery task of the ground-truth side: an SAE sweep (a Job, run through ``workers.jobs.run_job``).
Thin: the work is in ``workers.pipeline.sweeps``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.runs.models import Job
from workers.jobs import Progress, run_job


def sae_sweep_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.sweeps import sweep_work

    sweep_work(job, progress)


@shared_task(bind=True, name="workers.tasks_groundtruth.sae_sweep")
def sae_sweep(self: Any, job_id: int) -> None:
    """Train, measure and register every SAE of a sweep's grid."""
    run_job(self, job_id, sae_sweep_work)
