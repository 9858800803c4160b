from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.runs.intervention_scores import intervention_scores_job_create
from browser.runs.models import Job, Run
from browser.runs.services import job_create
from workers.cli import submit
from workers.tasks import score_run, score_run_work
from workers.tasks_steer import intervention_scores_work, score_interventions


class Command(BaseCommand):
    help = ("Score every unit of a finished harvest run: density, top-token concentration, context-cluster "
            "polysemanticity; for SAEs on neurons also in the run, features per neuron, neurons per feature, "
            "correlation and shared-context relations, and the layer's superposition. Running it again "
            "replaces the same rows.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run", type=int, required=True, help="the harvest run's id")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until done")
        parser.add_argument("--inline", action="store_true", help="compute in this process")
        parser.add_argument("--intervention", action="store_true",
                            help="instead: intervention scores (each unit zero-ablated on its own examples; causal LMs)")
        parser.add_argument("--contexts", type=int, default=16, help="with --intervention: examples per unit")

    def handle(self, *args: Any, **opts: Any) -> None:
        run = Run.objects.select_related("model", "corpus").filter(pk=opts["run"]).first()
        if run is None:
            raise CommandError(f"no run #{opts['run']}")
        if run.status != Run.Status.DONE:
            raise CommandError(f"run #{run.pk} is {run.status}, not done: score it once its harvest has finished")
        if opts["intervention"]:
            try:
                job = intervention_scores_job_create(run=run, contexts=opts["contexts"])
            except ValidationError as exc:
                raise CommandError(exc.messages[0]) from None
            job = submit(score_interventions, intervention_scores_work, job, wait=opts["wait"], inline=opts["inline"],
                         stdout=self.stdout)  # type: ignore[arg-type]
        else:
            job = job_create(kind=Job.Kind.SCORE, title=f"scores of run #{run.pk} ({run.model.name} x {run.corpus.name})",
                             params={"run_id": run.pk})
            job = submit(score_run, score_run_work, job, wait=opts["wait"], inline=opts["inline"],
                         stdout=self.stdout)  # type: ignore[arg-type]
        if job.status == Job.Status.SUCCEEDED and job.log:
            self.stdout.write(job.log.splitlines()[-1] + "\n")
