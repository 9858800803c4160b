"""Celery tasks of the causal side: steering requests (awaited by a web request) and the
intervention-score job (a Job like the other scores). Thin: the work is in ``workers.pipeline``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.runs.models import Job
from workers.jobs import Progress, run_job


@shared_task(name="workers.tasks_steer.steer_prompt", soft_time_limit=120, time_limit=150)
def steer_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """A prompt with and without unit edits (``workers.pipeline.steer``); the web request awaits it."""
    from workers.pipeline.steer import steer

    return steer(request=request)


def intervention_scores_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.intervention_scores import intervention_scores

    counts = intervention_scores(run_id=int(job.params["run_id"]),  # type: ignore[call-overload]
                                 contexts=int(job.params.get("contexts", 16)),  # type: ignore[union-attr]
                                 progress=progress)
    progress.log(", ".join(f"{k}: {v}" for k, v in counts.items()))


@shared_task(bind=True, name="workers.tasks_steer.score_interventions")
def score_interventions(self: Any, job_id: int) -> None:
    """Ablate every unit of a finished run on its own examples (``workers.pipeline.intervention_scores``)."""
    run_job(self, job_id, intervention_scores_work)
