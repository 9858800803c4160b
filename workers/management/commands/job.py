"""``job list``, ``job show ID``, ``job cancel ID`` and ``job workers``: the jobs of every long
task, and the workers that run them."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.runs.models import Job
from browser.runs.selectors import format_duration, job_eta, job_get, job_list, job_log_tail, job_percent
from browser.runs.services import job_cancel
from workers.presence import workers_up


class Command(BaseCommand):
    help = "List, show or cancel jobs (imports, harvests and every other long task); list the live workers."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="the latest jobs with status, progress and ETA")
        listing.add_argument("--limit", type=int, default=20, help="how many (1 to 1000)")
        show = sub.add_parser("show", help="one job: progress, ETA, error and the tail of its log")
        show.add_argument("id", type=int)
        show.add_argument("--lines", type=int, default=20, help="log lines to show")
        cancel = sub.add_parser("cancel", help="stop a job: at once if queued, at its next batch if running")
        cancel.add_argument("id", type=int)
        sub.add_parser("workers", help="the live workers (busy or idle) and the queues they consume")

    def handle(self, *args: Any, **opts: Any) -> None:
        action = opts["action"]
        if action == "list":
            self._list(opts["limit"])
        elif action == "show":
            self._show(_get(opts["id"]), opts["lines"])
        elif action == "workers":
            self._workers()
        else:
            self._cancel(opts["id"])

    def _list(self, limit: int) -> None:
        if not 1 <= limit <= 1000:
            raise CommandError("--limit must be between 1 and 1000")
        self.stdout.write(f"{'id':>6}  {'kind':<9} {'status':<10} {'progress':>8} {'eta':>8}  title\n")
        for job in job_list(limit=limit):
            self.stdout.write(f"{job.pk:>6}  {job.kind:<9} {job.status:<10} {job_percent(job):7.1f}% "
                              f"{format_duration(job_eta(job)):>8}  {job.title}\n")

    def _show(self, job: Job, lines: int) -> None:
        fields = [
            ("job", f"{job.pk} ({job.kind}) {job.title}"),
            ("status", job.status + (" (cancel requested)" if job.cancel_requested and job.status == "running" else "")),
            ("progress", f"{job.done:,} of {job.total:,} ({job_percent(job):.1f}%)"),
            ("eta", format_duration(job_eta(job))),
            ("message", job.message or "-"),
            ("attempts", str(job.attempts)),
            ("created", f"{job.created:%Y-%m-%d %H:%M:%S}"),
            ("started", f"{job.started:%Y-%m-%d %H:%M:%S}" if job.started else "-"),
            ("finished", f"{job.finished:%Y-%m-%d %H:%M:%S}" if job.finished else "-"),
            ("heartbeat", f"{job.heartbeat:%Y-%m-%d %H:%M:%S}" if job.heartbeat else "-"),
        ]
        for name, value in fields:
            self.stdout.write(f"{name + ':':<11}{value}\n")
        if job.error:
            self.stdout.write(f"error:\n{job.error.rstrip()}\n")
        tail = job_log_tail(job, lines)
        if tail:
            self.stdout.write("log:\n" + "".join(f"  {line}\n" for line in tail))

    def _workers(self) -> None:
        up = workers_up()
        if not up:
            self.stdout.write("No worker is up.\n")
        for name, queues in sorted(up.items()):
            self.stdout.write(f"{name}  {', '.join(queues)}\n")

    def _cancel(self, job_id: int) -> None:
        try:
            job = job_cancel(job_id=job_id, user=None)
        except Job.DoesNotExist:
            raise CommandError(f"no job with id {job_id}") from None
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        if job.status == Job.Status.CANCELLED:
            self.stdout.write(f"Job {job.pk} cancelled.\n")
        elif job.status == Job.Status.RUNNING:
            self.stdout.write(f"Job {job.pk}: cancel requested; its workers stop at their next batch.\n")
        else:
            self.stdout.write(f"Job {job.pk} already {job.status}; nothing to cancel.\n")


def _get(job_id: int) -> Job:
    try:
        return job_get(job_id=job_id)
    except Job.DoesNotExist:
        raise CommandError(f"no job with id {job_id}") from None
