"""Writes of jobs: every long task has one Job row with its status, progress and log tail."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from browser.runs.models import Job

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
    Job.objects.filter(pk=job_id).update(status=status, error=error[-10_000:], finished=timezone.now())


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
