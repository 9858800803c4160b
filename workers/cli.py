"""What the management commands share: queue a job's task and follow it with a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from io import TextIOBase
from typing import Any, TextIO

from django.conf import settings
from django.core.management.base import CommandError

from browser.runs.models import Job, Run
from workers.celery import ROUTES
from workers.jobs import Progress, run_job
from workers.presence import workers_alive
from workers.progress import progress_bar
from workers.queueing import resume_stalled_runs

# A text stream: sys.stdout, or a management command's OutputWrapper.
Output = TextIO | TextIOBase
FINISHED = {Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED}


def submit(task: Any, work: Callable[[Job, Progress], None], job: Job, *, wait: bool, inline: bool,
           stdout: Output) -> Job:
    """Queue ``task(job.pk)`` and follow it, or run ``work`` in this process (when asked, or when
    no worker answers) with a progress bar fed directly by its reports."""
    if not inline and wait and not workers_alive(ROUTES.get(task.name, "default")):
        stdout.write("No worker answered; running the job in this process.\n")
        inline = True
    if inline:
        return run_here(work, job, stdout)
    task.apply_async(args=[job.pk])
    if not wait:
        stdout.write(f"Queued job {job.pk}; follow it on the home page.\n")
        return job
    return follow(job.pk, stdout)


def run_here(work: Callable[[Job, Progress], None], job: Job, stdout: Output) -> Job:
    with progress_bar(total=1, desc=job.title[:40], file=stdout) as bar:

        def listener(done: int, total: int | None, message: str | None) -> None:
            if total:
                bar.total = total
            bar.n = done
            if message:
                bar.set_postfix_str(message[:60], refresh=False)
            bar.refresh()

        run_job(None, job.pk, work, listener)
    return _outcome(Job.objects.get(pk=job.pk))


def follow(job_id: int, stdout: Output, poll_s: float = 0.5) -> Job:
    """Show a progress bar until the job finishes; raise CommandError if it failed.

    Following a harvest also watches over it: a run that stalled (its workers died) gets its
    work queued again, for whichever worker is alive.
    """
    job = Job.objects.get(pk=job_id)
    run_ids = list(Run.objects.filter(job_id=job_id).values_list("pk", flat=True))
    last_resume = time.monotonic()
    with progress_bar(total=max(job.total, 1), desc=job.title[:40], file=stdout) as bar:
        while True:
            job.refresh_from_db()
            if job.total and bar.total != job.total:
                bar.total = job.total
            bar.n = min(job.done, bar.total)
            bar.set_postfix_str(job.message[:60], refresh=False)
            bar.refresh()
            if job.status in FINISHED:
                break
            if run_ids and time.monotonic() - last_resume >= settings.RESUME_EVERY_S:
                last_resume = time.monotonic()
                for run_id in resume_stalled_runs(run_ids):
                    stdout.write(f"\nRun #{run_id} had stalled (a worker died?); queued its work again.\n")
            time.sleep(poll_s)
    return _outcome(job)


def _outcome(job: Job) -> Job:
    if job.status == Job.Status.FAILED:
        raise CommandError(f"job {job.pk} failed: {job.error.strip().splitlines()[-1] if job.error else 'unknown error'}")
    if job.status == Job.Status.CANCELLED:
        raise CommandError(f"job {job.pk} was cancelled")
    return job
