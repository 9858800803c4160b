"""Intervention-score jobs (``workers.pipeline.intervention_scores``): created here for the command
line and the API, computed by a gpu-queue worker."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from browser.accounts import access
from browser.catalog.models import Model
from browser.runs.models import Job, Run
from browser.runs.services import job_create

TASK = "workers.tasks_steer.score_interventions"
MAX_CONTEXTS = 256


def intervention_scores_job_create(*, run: Run, contexts: int = 16, created_by: Any = None) -> Job:
    """A Job to score every unit of ``run`` by ablation; refuses what cannot be scored."""
    if run.status != Run.Status.DONE:
        raise ValidationError(f"run #{run.pk} is {run.status}, not done: score it once its harvest has finished")
    if run.model.kind != Model.Kind.CAUSAL_LM:
        raise ValidationError(f"{run.model.name} is not a causal language model: intervention scores measure "
                              "next-token predictions")
    if not 1 <= contexts <= MAX_CONTEXTS:
        raise ValidationError(f"contexts per unit must be 1 to {MAX_CONTEXTS}")
    return job_create(kind=Job.Kind.SCORE, title=f"intervention scores of run #{run.pk} ({run.model.name})",
                      params={"run_id": run.pk, "contexts": contexts}, created_by=created_by)


def intervention_scores_request(*, user: Any, run: Run, contexts: int = 16) -> Job:
    """The API's path: curators only; the task is queued once the job row is committed."""
    if not access.can_curate(user):
        raise PermissionDenied("scoring a run needs the curator role")
    job = intervention_scores_job_create(run=run, contexts=contexts, created_by=user)

    def queue() -> None:
        from workers.celery import app

        app.send_task(TASK, args=[job.pk])

    transaction.on_commit(queue)
    return job
