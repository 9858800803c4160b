"""Celery task of attribution graphs (a Job on the gpu queue); the work is in ``workers.pipeline.graphs``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.runs.models import Job
from workers.jobs import Progress, run_job


def graph_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.graphs import graph_compute

    graph_compute(graph_id=int(job.params["graph_id"]), progress=progress)  # type: ignore[call-overload]


@shared_task(bind=True, name="workers.tasks_graphs.compute_graph")
def compute_graph(self: Any, job_id: int) -> None:
    """Compute one requested attribution graph (``browser.graphs.services.graph_request``)."""
    run_job(self, job_id, graph_work)


@shared_task(name="workers.tasks_graphs.check_graph", soft_time_limit=120, time_limit=150)
def check_graph(graph_id: int, nodes: list[int], op: str = "zero", value: float = 0.0,
                target: int | None = None) -> dict[str, Any]:
    """Ablate or steer graph nodes: predicted vs real change of a target logit; the web request awaits it."""
    from workers.pipeline.graphs import graph_check

    return graph_check(graph_id=graph_id, nodes=nodes, op=op, value=value, target=target)
