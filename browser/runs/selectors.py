"""Reads of jobs and runs."""

from __future__ import annotations

from django.db.models import QuerySet

from browser.runs.models import Job, Run


def job_list(*, limit: int = 20) -> QuerySet[Job]:
    return Job.objects.order_by("-created")[:limit]


def run_list(*, limit: int = 20) -> QuerySet[Run]:
    return Run.objects.select_related("model", "corpus").order_by("-created")[:limit]


def job_percent(job: Job) -> float:
    return 100.0 * job.done / job.total if job.total else 0.0
