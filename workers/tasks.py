"""Celery tasks: ids in, the work done by pipeline services, the outcome on the Job row.

Each job task is a thin wrapper around a module-level *work* function ``(job, progress) -> None``,
which the command line can also run in-process (see ``workers.cli``). Job tasks and run tasks
fail one way: ``workers.jobs.guarded``.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from browser.corpora.services import corpus_mark_failed
from browser.runs.models import Job, Run
from browser.runs.services import job_update
from workers.jobs import Progress, run_job, run_task
from workers.queueing import FINALIZE_RUN, HARVEST_SHARDS, run_queue_finalize, run_queue_shards


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


def harvest_work(job: Job, progress: Progress) -> None:
    """The whole harvest in one process: every shard, then finalize (the command line's --inline;
    ``run_job`` ends the run with its job when it fails or is cancelled)."""
    from workers.pipeline.harvest import finalize, shards_work

    run_id = int(job.params["run_id"])  # type: ignore[call-overload]
    shards_work(run_id=run_id, on_all_done=lambda _: None, progress=progress)
    finalize(run_id=run_id, progress=progress)


@shared_task(bind=True, name=HARVEST_SHARDS)
def harvest_shards(self: Any, run_id: int) -> None:
    """Claim and process shards of the run until none is left; the last one queues finalize."""
    from workers.pipeline.harvest import shards_work

    run_task(self, run_id, lambda: shards_work(run_id=run_id, on_all_done=lambda rid: run_queue_finalize(run_id=rid)))


@shared_task(bind=True, name=FINALIZE_RUN)
def finalize_run(self: Any, run_id: int) -> None:
    from workers.pipeline.harvest import finalize

    def body() -> None:
        run = Run.objects.get(pk=run_id)
        finalize(run_id=run_id, progress=Progress(run.job_id) if run.job_id else (lambda *a, **k: None))

    run_task(self, run_id, body)


def train_sae_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.sae_train import sae_train_work

    sae_train_work(job, progress)


@shared_task(bind=True, name="workers.tasks.train_sae")
def train_sae(self: Any, job_id: int) -> None:
    """Train an SAE and register it (see ``workers.pipeline.sae_train``)."""
    run_job(self, job_id, train_sae_work)


@shared_task(name="workers.tasks.probe_unit", soft_time_limit=60, time_limit=90)
def probe_unit(unit_id: int, text: str) -> dict[str, list[Any]]:
    """A unit's activations on a user's text ("Try your own text"); the web request awaits it."""
    from workers.pipeline.probe import probe

    return probe(unit_id=unit_id, text=text)


def score_labels_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.label_scores import label_scores

    counts = label_scores(source_id=int(job.params["source_id"]),  # type: ignore[call-overload]
                          force=bool(job.params.get("force", False)), progress=progress)
    progress.log(", ".join(f"{k}: {v}" for k, v in counts.items()))


@shared_task(bind=True, name="workers.tasks.score_labels")
def score_labels(self: Any, job_id: int) -> None:
    """Score the labels of one source: the label's embedding against firing and silent contexts."""
    run_job(self, job_id, score_labels_work)


def harvest_request_work(job: Job, progress: Progress) -> None:
    """A harvest asked for over the API: create its run (validated here, where the model can be
    loaded) and queue its shards; the run's own job then shows the harvest's progress."""
    from workers.pipeline.requests import harvest_from_request

    run, created = harvest_from_request(job.params["request"], user=job.created_by)  # type: ignore[index]
    if created:
        run_queue_shards(run_id=run.pk, tasks=run.n_shards)
    job_update(job=job, params={**job.params, "run_id": run.pk})
    progress.log(f"run #{run.pk} {'created, ' + str(run.n_shards) + ' shard(s) queued' if created else 'exists'}")


@shared_task(bind=True, name="workers.tasks.harvest_request")
def harvest_request(self: Any, job_id: int) -> None:
    run_job(self, job_id, harvest_request_work)


def score_run_work(job: Job, progress: Progress) -> None:
    from workers.pipeline.scores import scores_compute

    counts = scores_compute(run_id=int(job.params["run_id"]), progress=progress)  # type: ignore[call-overload]
    progress.log(", ".join(f"{k}: {v}" for k, v in counts.items()))


@shared_task(bind=True, name="workers.tasks.score_run")
def score_run(self: Any, job_id: int) -> None:
    """Score every unit of a finished harvest run (see ``workers.pipeline.scores``)."""
    run_job(self, job_id, score_run_work)
