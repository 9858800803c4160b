"""Celery tasks of search and the source overviews: re-embedding queued units (woken by label writes),
embedding a whole source, snapshots of the vector index. Thin: the work is in ``workers.pipeline``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.runs.models import Job
from workers.jobs import Progress, guarded, run_job


@shared_task(bind=True, name="workers.tasks_search.embed_pending", soft_time_limit=600, time_limit=660)
def embed_pending(self: Any) -> None:
    """Embed the units queued by label writes (``browser.search.services.embedding_queue``) up
    to now; writes from here on queue the next task."""
    from django.db import connection

    from browser.search.services import embed_task_started
    from workers.pipeline.search import embed_pending as work

    def body() -> None:
        embed_task_started()
        with connection.cursor() as cursor:  # the database's clock, which stamps the queue
            cursor.execute("SELECT clock_timestamp()")
            start = cursor.fetchone()[0]
        work(before=start)

    guarded(self, body, job_id=None)


def embed_source_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.search import embed_source, snapshot_build

    written = embed_source(int(job.params["source_id"]),  # type: ignore[call-overload]
                           progress=lambda done, total: progress(done, total))
    count = snapshot_build()
    progress.log(f"{written} vectors written; index snapshot of {count} vectors")


@shared_task(bind=True, name="workers.tasks_search.embed_source")
def embed_source(self: Any, job_id: int) -> None:
    """Embed every unit of a source for semantic search, then snapshot the index."""
    run_job(self, job_id, embed_source_work)


def overview_work(job: Job, progress: Progress) -> None:
    """The map of a source (if ``map``), then the families of its model's SAEs (if ``families``)."""
    from workers.pipeline.maps import layer_families, source_map, width_families

    source_id = int(job.params["source_id"])  # type: ignore[call-overload]
    if job.params.get("map", True):
        progress(0, 2, "map: layout of the directions")
        row = source_map(source_id)
        progress.log(f"map: {row.method}, state {row.state[:12]}")
    if job.params.get("families", True):
        from browser.catalog.models import Source

        model_id = Source.objects.values_list("model_id", flat=True).get(pk=source_id)
        progress(1, 2, "families: decoder cosines")
        progress.log(f"families: {width_families(model_id)} width links, {layer_families(model_id)} layer links")
    progress(2, 2, force=True)


@shared_task(bind=True, name="workers.tasks_search.source_overview")
def source_overview(self: Any, job_id: int) -> None:
    """A source's map and its model's feature families (``workers.pipeline.maps``)."""
    run_job(self, job_id, overview_work)
