"""Reads of jobs and runs."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from browser.runs.models import Job, Run


def job_list(*, limit: int = 20) -> QuerySet[Job]:
    return Job.objects.order_by("-created")[:limit]


def run_list(*, limit: int = 20) -> QuerySet[Run]:
    return Run.objects.select_related("model", "corpus").order_by("-created")[:limit]


def job_percent(job: Job) -> float:
    return 100.0 * job.done / job.total if job.total else 0.0


def job_list_with_progress(*, limit: int = 20) -> list[Job]:
    """The newest jobs, each with its ``percent`` (the home page's table and the overview's jobs)."""
    jobs = list(Job.objects.select_related("created_by").order_by("-created")[:limit])
    for job in jobs:
        job.percent = job_percent(job)  # type: ignore[attr-defined]
    return jobs


def job_get(*, job_id: int) -> Job:
    return Job.objects.select_related("created_by").get(pk=job_id)


def job_eta(job: Job, now: datetime | None = None) -> timedelta | None:
    """Time left at the rate seen since the job started; None until there is a rate."""
    if job.status != Job.Status.RUNNING or job.started is None or job.done <= 0 or job.total <= job.done:
        return None
    elapsed = (now or timezone.now()) - job.started
    return elapsed * ((job.total - job.done) / job.done)


def job_log_tail(job: Job, lines: int = 20) -> list[str]:
    return job.log.splitlines()[-lines:] if lines > 0 else []


def format_duration(delta: timedelta | None) -> str:
    if delta is None:
        return "-"
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
