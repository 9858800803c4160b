from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Source
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.cli import submit
from workers.tasks_search import embed_source, embed_source_work, overview_work, source_overview


class Command(BaseCommand):
    help = ("A source's overviews: its 2-D map (UMAP of decoder / output directions, kept for the source's "
            "current state), the feature families of its model's SAEs, and (--embed) the vectors of its units "
            "for semantic search.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--source", required=True)
        parser.add_argument("--no-map", action="store_true")
        parser.add_argument("--no-families", action="store_true")
        parser.add_argument("--embed", action="store_true", help="embed the units for semantic search too")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until done")
        parser.add_argument("--inline", action="store_true", help="compute in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        source = Source.objects.filter(model__name=opts["model"], name=opts["source"]).first()
        if source is None:
            raise CommandError(f"no source {opts['model']}/{opts['source']}")
        name = f"{opts['model']}/{opts['source']}"
        jobs = []
        if not (opts["no_map"] and opts["no_families"]):
            jobs.append((source_overview, overview_work, job_create(
                kind=Job.Kind.SCORE, title=f"map and families {name}",
                params={"source_id": source.pk, "map": not opts["no_map"], "families": not opts["no_families"]})))
        if opts["embed"]:
            jobs.append((embed_source, embed_source_work, job_create(
                kind=Job.Kind.SCORE, title=f"search vectors {name}", params={"source_id": source.pk})))
        for task, work, job in jobs:
            job = submit(task, work, job, wait=opts["wait"], inline=opts["inline"], stdout=self.stdout)
            if job.status == Job.Status.SUCCEEDED and job.log:
                self.stdout.write(job.log.strip() + "\n")
