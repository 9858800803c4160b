from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Source
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.cli import submit
from workers.tasks import score_labels, score_labels_work


class Command(BaseCommand):
    help = ("Score each label of a source offline: the AUC with which the label's MiniLM embedding ranks the "
            "unit's firing contexts above silent ones (stored as the label's label_auc score). Only labels "
            "without a current score are computed, unless --force.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--source", required=True)
        parser.add_argument("--force", action="store_true", help="recompute scores that are current")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until done")
        parser.add_argument("--inline", action="store_true", help="compute in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        source = Source.objects.filter(model__name=opts["model"], name=opts["source"]).first()
        if source is None:
            raise CommandError(f"no source {opts['model']}/{opts['source']}")
        job = job_create(kind=Job.Kind.SCORE, title=f"label scores {opts['model']}/{opts['source']}",
                         params={"source_id": source.pk, "force": opts["force"]})
        job = submit(score_labels, score_labels_work, job, wait=opts["wait"], inline=opts["inline"],
                     stdout=self.stdout)  # type: ignore[arg-type]
        if job.status == Job.Status.SUCCEEDED and job.log:
            self.stdout.write(job.log.splitlines()[-1] + "\n")
