"""The one place that queues a run's shard tasks: the harvest command, the API request path,
the stalled-run check and the benchmarks all call :func:`run_queue_shards`. A finished harvest
queues its sources' semantic-search embeddings here too (:func:`run_queue_embeddings`).

Tasks are sent by name, so this module needs the Celery app only, never the task modules (which
import the job machinery): no import cycle.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction

from browser.runs.models import Job, Run
from browser.runs.services import job_create, runs_stalled
from workers.celery import app

logger = logging.getLogger(__name__)
HARVEST_SHARDS = "workers.tasks.harvest_shards"
FINALIZE_RUN = "workers.tasks.finalize_run"
EMBED_SOURCE = "workers.tasks_search.embed_source"
BACKGROUND_PRIORITY = 9
"""Priority of a run's search-embedding tasks: the lowest of the Redis transport's steps (0, 3, 6,
9; 0 is taken first, and tasks sent without one count as 0), so a worker takes them only when no
other task waits on its queues (a score job queued after the harvest runs before them)."""


def run_queue_shards(*, run_id: int, tasks: int = 1) -> None:
    """Queue ``tasks`` harvest tasks for the run (its shard count, for a new run: each task claims
    shards until none is left, so a task too many finds nothing and ends)."""
    for _ in range(tasks):
        app.send_task(HARVEST_SHARDS, args=[run_id])


def run_queue_finalize(*, run_id: int) -> None:
    """Queue the run's finalize (its last shard is done)."""
    app.send_task(FINALIZE_RUN, args=[run_id])


def resume_stalled_runs(run_ids: list[int] | None = None) -> list[int]:
    """Queue a harvest task for every stalled run (see ``runs_stalled``); any worker or follower
    may call this at any time: a task too many finds nothing to claim and ends."""
    stalled = [r for r in runs_stalled() if run_ids is None or r in run_ids]
    for run_id in stalled:
        run_queue_shards(run_id=run_id)
        logger.warning("run %s had stalled; queued its work again", run_id)
    return stalled


def run_queue_embeddings(*, run_id: int) -> list[int]:
    """Queue one ``embed_source`` job per source of a finished run, sent once the caller's
    transaction commits: semantic search describes a unit by its labels and its top contexts
    (``workers.pipeline.search``), and the harvest has just written those contexts. The job embeds
    only units whose text changed and then snapshots the index. Sent with ``BACKGROUND_PRIORITY``:
    search vectors are not waited for, and a score or harvest queued meanwhile goes first. Returns
    the job ids."""
    run = Run.objects.select_related("model").get(pk=run_id)
    job_ids = []
    for source in run.sources.order_by("layer", "kind", "name"):
        job = job_create(kind=Job.Kind.SCORE, title=f"search vectors {run.model.name}/{source.name}",
                         params={"source_id": source.pk})
        transaction.on_commit(partial(app.send_task, EMBED_SOURCE, args=[job.pk], priority=BACKGROUND_PRIORITY),
                              robust=True)
        job_ids.append(job.pk)
    return job_ids
