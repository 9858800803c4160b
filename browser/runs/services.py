"""Writes of jobs (every long task has one, with status, progress and log tail), runs and shards.

Liveness: a shard's claim is a lease renewed by heartbeats (``BROWSER_SHARD_LEASE_S``); the
finalize of a run and the watch over a run's shards are PostgreSQL advisory locks, which the
server releases by itself when the holder's connection dies (a killed worker, a restart).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat, Right
from django.utils import timezone

from browser.accounts import access
from browser.core.models import Blob
from browser.core.services import blob_delete, blob_write
from browser.runs.models import Job, Run, Shard

LOG_TAIL_CHARS = 20_000
# A running job whose worker has not beaten its heart for this long may be taken over. Long,
# because a job working inside one transaction (tokenizing) cannot show its heartbeats.
JOB_LEASE = timedelta(seconds=120)


class JobCancelled(Exception):
    """The job was cancelled by a user; its task stops at the next progress report."""


def job_create(*, kind: str, title: str, params: dict[str, object] | None = None, created_by: Any = None) -> Job:
    return Job.objects.create(kind=kind, title=title[:300], params=params or {}, created_by=created_by)


def job_claim(*, job_id: int, lease: timedelta = JOB_LEASE, retries: int = 0, max_attempts: int | None = None) -> bool:
    """Mark the job running; False if it is finished or another live worker holds it.

    ``retries`` is the Celery retry count of the claiming task: a running job with no more
    attempts than that was held by this task's own earlier, failed attempts. A job claimed
    ``max_attempts`` times already (its worker died each time, and the broker redelivered its
    task) is failed instead of run again.
    """
    now = timezone.now()
    claimable = (Q(status=Job.Status.QUEUED) | Q(status=Job.Status.RUNNING, heartbeat__lt=now - lease)
                 | Q(status=Job.Status.RUNNING, attempts__lte=retries))
    # A cancel asked while no worker held the job (it died, or the task was lost) ends it here.
    Job.objects.filter(claimable, pk=job_id, cancel_requested=True).update(
        status=Job.Status.CANCELLED, finished=now)
    if max_attempts is not None and Job.objects.filter(claimable, pk=job_id, attempts__gte=max_attempts).update(
            status=Job.Status.FAILED, finished=now, error=f"gave up after {max_attempts} attempts"):
        job_log(job_id=job_id, line=f"gave up after {max_attempts} attempts (its worker stopped during each)")
        return False
    updated = Job.objects.filter(claimable, pk=job_id, cancel_requested=False).update(
        status=Job.Status.RUNNING, started=now, heartbeat=now, attempts=F("attempts") + 1, error=""
    )
    return updated == 1


def job_start(*, job_id: int) -> None:
    """Mark a queued job running (a harvest, whose shards are claimed one by one, not the job)."""
    now = timezone.now()
    Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started=now, heartbeat=now, attempts=F("attempts") + 1)


def job_update(*, job: Job, params: dict[str, object] | None = None, total: int | None = None) -> None:
    """Replace the job's ``params`` and/or set its ``total`` (one UPDATE, a no-op for a job whose
    row is gone); the instance follows."""
    fields: dict[str, object] = {}
    if params is not None:
        fields["params"] = job.params = params
    if total is not None:
        fields["total"] = job.total = total
    if fields:
        Job.objects.filter(pk=job.pk).update(**fields)


def job_cancel_requested(*, job_id: int) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


def job_progress(*, job_id: int, done: int, total: int | None = None, message: str | None = None) -> None:
    """Record progress and beat the job's heart; raises JobCancelled when a cancel was asked."""
    fields: dict[str, object] = {"done": done, "heartbeat": timezone.now()}
    if total is not None:
        fields["total"] = total
    if message is not None:
        fields["message"] = message[:500]
    Job.objects.filter(pk=job_id).update(**fields)
    if Job.objects.filter(pk=job_id, cancel_requested=True).exists():
        raise JobCancelled(f"job {job_id} was cancelled")


def job_log(*, job_id: int, line: str) -> None:
    """Append a line to the job's log, keeping its tail; one UPDATE, so concurrent workers'
    lines are never lost."""
    stamped = f"{timezone.now():%Y-%m-%d %H:%M:%S} {line.rstrip()}\n"
    Job.objects.filter(pk=job_id).update(log=Right(Concat(F("log"), Value(stamped)), LOG_TAIL_CHARS))


def job_finish(*, job_id: int, status: str, error: str = "") -> None:
    fields: dict[str, object] = {"status": status, "error": error[-10_000:], "finished": timezone.now()}
    if status == Job.Status.SUCCEEDED:
        fields["done"] = F("total")  # the last progress report may have been throttled away
    Job.objects.filter(pk=job_id).update(**fields)


def work_end(*, job_id: int | None, run_id: int | None = None, status: str, error: str = "") -> None:
    """End a task's work as cancelled or failed: its job, and the run it belongs to (``run_id``,
    or else the unfinished runs of that job: a harvest's), in one transaction."""
    if run_id is not None:
        runs = Run.objects.filter(pk=run_id)
    else:
        runs = Run.objects.filter(job_id=job_id) if job_id is not None else Run.objects.none()
    with transaction.atomic():
        runs.exclude(status__in=[Run.Status.DONE, Run.Status.FAILED, Run.Status.CANCELLED]).update(
            status=status, error=_first_line(error)[-10_000:], finished=timezone.now())
        if job_id is not None:
            job_finish(job_id=job_id, status=status, error=error)


def _first_line(error: str) -> str:
    """A traceback's last line (the error itself), or the message as it is."""
    lines = error.strip().splitlines()
    return lines[-1] if lines and lines[0].startswith("Traceback") else error


def job_requeue(*, job_id: int, error: str) -> None:
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(status=Job.Status.QUEUED, error=error[-10_000:])


def job_cancel(*, job_id: int, user: object = None) -> Job:
    """Ask a job to stop. A queued job (and its run) is cancelled at once; a running one stops at
    its next progress report (a harvest's workers: at their next batch). A finished job is
    returned unchanged.

    ``user`` None is the command line (anything goes); otherwise the access layer decides
    (the job's creator, or a curator).
    Raises ``Job.DoesNotExist`` and ``django.core.exceptions.PermissionDenied``.
    """
    job = Job.objects.get(pk=job_id)
    if user is not None and not access.can_cancel_job(user, job):
        raise PermissionDenied(f"only the creator of job {job_id} or a curator may cancel it")
    now = timezone.now()
    with transaction.atomic():
        if Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
                status=Job.Status.CANCELLED, cancel_requested=True, finished=now):
            Run.objects.filter(job_id=job_id, status=Run.Status.QUEUED).update(
                status=Run.Status.CANCELLED, finished=now)
        Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(cancel_requested=True)
    if job.status in {Job.Status.QUEUED, Job.Status.RUNNING}:
        job_log(job_id=job_id, line=f"cancel requested by {user or 'the command line'}")
    job.refresh_from_db()
    return job


# ---- harvest runs and shards -----------------------------------------------------------------

def run_create(*, model: Any, corpus: Any, config: dict[str, Any], config_hash: str, sources: list[Any],
               status: str = Run.Status.QUEUED, job: Job | None = None, created_by: Any = None,
               n_shards: int = 0, contexts_total: int | None = None, contexts_done: int = 0,
               finished: Any = None) -> Run:
    """A run of ``model`` over ``corpus`` with its sources (harvests, toy harvests and imports all
    create runs here); unique per model, corpus and config hash."""
    total = corpus.n_contexts if contexts_total is None else contexts_total
    run = Run.objects.create(model=model, corpus=corpus, config=config, config_hash=config_hash, status=status,
                             job=job, created_by=created_by, n_shards=n_shards, contexts_total=total,
                             contexts_done=contexts_done, finished=finished)
    run.sources.set(sources)
    return run


def shard_lease() -> timedelta:
    """How long a shard's claim lasts without a heartbeat (``BROWSER_SHARD_LEASE_S``)."""
    return timedelta(seconds=settings.SHARD_LEASE_S)


def shards_create(*, run: Run, n_contexts: int, shard_contexts: int) -> list[Shard]:
    shards = [
        Shard(run=run, index=i, start=start, end=min(start + shard_contexts, n_contexts))
        for i, start in enumerate(range(0, n_contexts, shard_contexts))
    ]
    return Shard.objects.bulk_create(shards)


def shard_claim(*, run_id: int, worker: str, lease: timedelta | None = None) -> Shard | None:
    """Claim the next pending shard, or one whose worker stopped beating its heart.

    A worker may reclaim at once a shard it holds itself: one worker process runs one task at a
    time, so such a claim is left over from its own earlier attempt (a transient error).
    """
    now = timezone.now()
    with transaction.atomic():
        shard = (
            Shard.objects.select_for_update(skip_locked=True)
            .filter(_claimable(worker, now - (lease or shard_lease())), run_id=run_id)
            .order_by("index")
            .first()
        )
        if shard is None:
            return None
        if shard.attempts >= settings.SHARD_MAX_ATTEMPTS:
            Shard.objects.filter(pk=shard.pk).update(
                status=Shard.Status.FAILED, error=f"gave up after {shard.attempts} attempts"
            )
            return None
        token = uuid.uuid4().hex
        Shard.objects.filter(pk=shard.pk).update(
            status=Shard.Status.CLAIMED, claimed_by=worker[:200], claim_token=token, heartbeat=now,
            attempts=F("attempts") + 1, contexts_done=0,
        )
    shard.refresh_from_db()
    return shard


def shard_claimable(*, run_id: int, worker: str) -> bool:
    """Whether ``shard_claim`` would find a shard now (a worker loads its model before claiming)."""
    return Shard.objects.filter(_claimable(worker, timezone.now() - shard_lease()), run_id=run_id).exists()


def _claimable(worker: str, stale: datetime) -> Q:
    return Q(status=Shard.Status.PENDING) | Q(status=Shard.Status.CLAIMED) & (
        Q(heartbeat__lt=stale) | Q(claimed_by=worker[:200]))


def shard_heartbeat(*, shard: Shard, contexts_done: int) -> bool:
    """Record progress; False when the claim was lost (another worker took the shard over)."""
    updated = Shard.objects.filter(pk=shard.pk, claim_token=shard.claim_token, status=Shard.Status.CLAIMED).update(
        heartbeat=timezone.now(), contexts_done=contexts_done
    )
    return updated == 1


def shard_complete(*, shard: Shard, partial: bytes, on_complete: Callable[[], None] | None = None) -> bool:
    """Store the shard's partial result and mark it done; True when every shard of the run is.

    The run row is locked so that exactly one completing shard sees the run finished.
    ``on_complete`` runs in the same transaction, under that lock, once the shard is known to be
    this worker's to complete (so it runs once per shard: if it raises, the shard stays claimed
    and is redone).
    """
    with transaction.atomic():
        Run.objects.select_for_update().get(pk=shard.run_id)
        blob = blob_write(key=run_blob_key(shard.run_id, f"shard-{shard.index}-{shard.claim_token}"), data=partial)
        updated = Shard.objects.filter(
            pk=shard.pk, claim_token=shard.claim_token, status=Shard.Status.CLAIMED
        ).update(status=Shard.Status.DONE, partial=blob, contexts_done=shard.end - shard.start,
                 heartbeat=timezone.now())
        if updated != 1:
            transaction.set_rollback(True)
            return False
        if on_complete is not None:
            on_complete()
        return not Shard.objects.filter(run_id=shard.run_id).exclude(status=Shard.Status.DONE).exists()


def run_blob_key(run_id: int, name: str) -> str:
    """The key of a run-level blob (deleted with the run)."""
    return f"run-{run_id}-{name}"


def run_progress(*, run: Run) -> int:
    done = sum(Shard.objects.filter(run=run).values_list("contexts_done", flat=True))
    Run.objects.filter(pk=run.pk).update(contexts_done=done)
    if run.job_id:
        Job.objects.filter(pk=run.job_id).update(done=done, total=run.contexts_total, heartbeat=timezone.now())
    return done


def run_start(*, run_id: int) -> bool:
    """Move a queued run to harvesting (its first shard worker has come); whether this call did."""
    return Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).update(status=Run.Status.HARVESTING) == 1


def run_claim_finalize(*, run: Run) -> bool:
    """Move the run to finalizing. Call it holding the run's finalize lock: a run already
    finalizing whose lock was free lost its finalizer, and is finalized again."""
    return Run.objects.filter(
        pk=run.pk, status__in=[Run.Status.HARVESTING, Run.Status.QUEUED, Run.Status.FINALIZING]
    ).update(status=Run.Status.FINALIZING) == 1


# Advisory lock classes (the first key of pg_try_advisory_lock(int, int)); the run id is the second.
FINALIZE_LOCK = 0x6E62_0001
WATCH_LOCK = 0x6E62_0002


@contextmanager
def run_lock(*, run_id: int, kind: int) -> Iterator[bool]:
    """Try to take a session advisory lock on the run; yields whether it was taken.

    PostgreSQL releases it when the holder's connection ends, so a killed worker never keeps it.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [kind, run_id])
        taken = bool(cursor.fetchone()[0])
    try:
        yield taken
    finally:
        if taken and connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [kind, run_id])


def run_lock_free(*, run_id: int, kind: int) -> bool:
    """Whether nobody holds the run's lock of this kind (a held lock means a live holder)."""
    with run_lock(run_id=run_id, kind=kind) as taken:
        return taken


def runs_stalled() -> list[int]:
    """Unfinished runs that nobody is working on: no live watcher and no live finalizer, and
    either an expired shard claim, every shard done but no result, or no shard activity for a
    whole lease (their queued tasks were lost). Queue a harvest task for each."""
    stale = timezone.now() - shard_lease()
    stalled = []
    for run in Run.objects.filter(status__in=[Run.Status.QUEUED, Run.Status.HARVESTING, Run.Status.FINALIZING]):
        shards = Shard.objects.filter(run=run)
        expired = shards.filter(status=Shard.Status.CLAIMED, heartbeat__lt=stale).exists()
        unfinished = shards.exclude(status=Shard.Status.DONE).exists()
        last_beat = shards.exclude(heartbeat=None).order_by("-heartbeat").values_list("heartbeat", flat=True).first()
        idle = (last_beat or run.created) < stale
        if not (expired or not unfinished or idle):
            continue
        if run_lock_free(run_id=run.pk, kind=WATCH_LOCK) and run_lock_free(run_id=run.pk, kind=FINALIZE_LOCK):
            stalled.append(run.pk)
    return stalled


def run_mark(*, run: Run, status: str, error: str = "") -> None:
    fields: dict[str, object] = {"status": status, "error": error[-10_000:]}
    if status in {Run.Status.DONE, Run.Status.FAILED, Run.Status.CANCELLED}:
        fields["finished"] = timezone.now()
    Run.objects.filter(pk=run.pk).update(**fields)


def runs_cover_corpus(*, corpus: Any, n_contexts: int) -> None:
    """Every run over ``corpus`` has done all of its ``n_contexts`` contexts (an imported corpus grows
    with each import, and its run holds exactly what was imported)."""
    Run.objects.filter(corpus=corpus).update(contexts_total=n_contexts, contexts_done=n_contexts)


def run_config_set(*, run: Run, config: dict[str, Any]) -> None:
    Run.objects.filter(pk=run.pk).update(config=config)


def run_delete(*, run: Run) -> None:
    """Delete a run with its shards, results, the shards' partial blobs and the run's own blobs
    (which a plain cascade would leave behind: shards point at blobs, not the other way round)."""
    ids = {i for i in Shard.objects.filter(run=run).values_list("partial_id", flat=True) if i}
    ids |= set(Blob.objects.filter(key__startswith=run_blob_key(run.pk, "")).values_list("pk", flat=True))
    with transaction.atomic():
        run.delete()
        blob_delete(blob_ids=sorted(ids))
