"""Writes of jobs (every long task has one, with status, progress and log tail), runs and shards."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from browser.core.blobs import blob_delete, blob_write
from browser.runs.models import Job, Run, Shard

LOG_TAIL_CHARS = 20_000
# A running job whose worker has not beaten its heart for this long may be taken over.
JOB_LEASE = timedelta(seconds=120)


class JobCancelled(Exception):
    """The job was cancelled by a user; its task stops at the next progress report."""


def job_create(*, kind: str, title: str, params: dict[str, object] | None = None, created_by: object = None) -> Job:
    return Job.objects.create(kind=kind, title=title[:300], params=params or {}, created_by=created_by)


def job_claim(*, job_id: int, lease: timedelta = JOB_LEASE) -> bool:
    """Mark the job running; False if it is finished or another live worker holds it."""
    now = timezone.now()
    claimable = Q(status=Job.Status.QUEUED) | Q(status=Job.Status.RUNNING, heartbeat__lt=now - lease)
    updated = Job.objects.filter(claimable, pk=job_id, cancel_requested=False).update(
        status=Job.Status.RUNNING, started=now, heartbeat=now, attempts=F("attempts") + 1, error=""
    )
    return updated == 1


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
    job = Job.objects.only("log").get(pk=job_id)
    log = (job.log + line.rstrip() + "\n")[-LOG_TAIL_CHARS:]
    Job.objects.filter(pk=job_id).update(log=log)


def job_finish(*, job_id: int, status: str, error: str = "") -> None:
    fields: dict[str, object] = {"status": status, "error": error[-10_000:], "finished": timezone.now()}
    if status == Job.Status.SUCCEEDED:
        fields["done"] = F("total")  # the last progress report may have been throttled away
    Job.objects.filter(pk=job_id).update(**fields)


def job_requeue(*, job_id: int, error: str) -> None:
    Job.objects.filter(pk=job_id).update(status=Job.Status.QUEUED, error=error[-10_000:])


def job_cancel(*, job: Job) -> Job:
    """Ask a job to stop. A queued job is cancelled at once; a running one at its next report."""
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, cancel_requested=True, finished=timezone.now()
    )
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


# ---- harvest runs and shards -----------------------------------------------------------------

# A claimed shard whose worker has not beaten its heart for this long is redone by another.
SHARD_LEASE = timedelta(seconds=90)
MAX_SHARD_ATTEMPTS = 3


def shards_create(*, run: Run, n_contexts: int, shard_contexts: int) -> list[Shard]:
    shards = [
        Shard(run=run, index=i, start=start, end=min(start + shard_contexts, n_contexts))
        for i, start in enumerate(range(0, n_contexts, shard_contexts))
    ]
    return Shard.objects.bulk_create(shards)


def shard_claim(*, run_id: int, worker: str, lease: timedelta = SHARD_LEASE) -> Shard | None:
    """Claim the next pending shard, or one whose worker stopped beating its heart."""
    now = timezone.now()
    claimable = Q(status=Shard.Status.PENDING) | Q(status=Shard.Status.CLAIMED, heartbeat__lt=now - lease)
    with transaction.atomic():
        shard = (
            Shard.objects.select_for_update(skip_locked=True)
            .filter(claimable, run_id=run_id)
            .order_by("index")
            .first()
        )
        if shard is None:
            return None
        if shard.attempts >= MAX_SHARD_ATTEMPTS:
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


def shard_heartbeat(*, shard: Shard, contexts_done: int) -> bool:
    """Record progress; False when the claim was lost (another worker took the shard over)."""
    updated = Shard.objects.filter(pk=shard.pk, claim_token=shard.claim_token, status=Shard.Status.CLAIMED).update(
        heartbeat=timezone.now(), contexts_done=contexts_done
    )
    return updated == 1


def shard_complete(*, shard: Shard, partial: bytes) -> bool:
    """Store the shard's partial result and mark it done; True when every shard of the run is.

    The run row is locked so that exactly one completing shard sees the run finished.
    """
    with transaction.atomic():
        Run.objects.select_for_update().get(pk=shard.run_id)
        blob = blob_write(key=f"run-{shard.run_id}-shard-{shard.index}-{shard.claim_token}", data=partial)
        updated = Shard.objects.filter(
            pk=shard.pk, claim_token=shard.claim_token, status=Shard.Status.CLAIMED
        ).update(status=Shard.Status.DONE, partial=blob, contexts_done=shard.end - shard.start,
                 heartbeat=timezone.now())
        if updated != 1:
            transaction.set_rollback(True)
            return False
        return not Shard.objects.filter(run_id=shard.run_id).exclude(status=Shard.Status.DONE).exists()


def run_progress(*, run: Run) -> int:
    done = sum(Shard.objects.filter(run=run).values_list("contexts_done", flat=True))
    Run.objects.filter(pk=run.pk).update(contexts_done=done)
    if run.job_id:
        Job.objects.filter(pk=run.job_id).update(done=done, total=run.contexts_total, heartbeat=timezone.now())
    return done


def run_claim_finalize(*, run: Run) -> bool:
    return Run.objects.filter(pk=run.pk, status__in=[Run.Status.HARVESTING, Run.Status.QUEUED]).update(
        status=Run.Status.FINALIZING
    ) == 1


def run_mark(*, run: Run, status: str, error: str = "") -> None:
    fields: dict[str, object] = {"status": status, "error": error[-10_000:]}
    if status in {Run.Status.DONE, Run.Status.FAILED, Run.Status.CANCELLED}:
        fields["finished"] = timezone.now()
    Run.objects.filter(pk=run.pk).update(**fields)


def run_delete(*, run: Run) -> None:
    """Delete a run with its shards, results and the shards' partial blobs (which a plain
    cascade would leave behind: shards point at blobs, not the other way round)."""
    ids = [i for i in Shard.objects.filter(run=run).values_list("partial_id", flat=True) if i]
    with transaction.atomic():
        run.delete()
        blob_delete(blob_ids=ids)
