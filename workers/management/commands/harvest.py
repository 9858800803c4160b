from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.runs.models import Run
from workers.cli import follow, run_here
from workers.compute.config import DEFAULT_HOOKS, harvest_default
from workers.compute.hooks import HookError
from workers.compute.loading import ModelLoadError
from workers.pipeline.harvest import HarvestInputError
from workers.pipeline.requests import harvest_from_request
from workers.presence import workers_alive
from workers.queueing import run_queue_shards
from workers.tasks import harvest_work


class Command(BaseCommand):
    help = (
        "Harvest every unit at the given hook points: top-k contexts, interval and random examples, "
        "density, histogram and logit effects. Queues the run's shards on the gpu queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="a registered model or packaged alias")
        parser.add_argument("--corpus", required=True, help="the name of an imported corpus")
        parser.add_argument("--hooks", default=DEFAULT_HOOKS,
                            help="comma-separated hook points or globs (default: every MLP's neurons); none: no neurons")
        parser.add_argument("--saes", default="", help="comma-separated names of registered SAEs whose features "
                                                        "to harvest in the same forward pass")
        parser.add_argument("--k", type=int, default=harvest_default("k"), help="top contexts per unit")
        parser.add_argument("--batch-size", type=int, default=harvest_default("batch_size"))
        parser.add_argument("--shard-contexts", type=int, default=harvest_default("shard_contexts"),
                            help="contexts per shard")
        parser.add_argument("--device", default=harvest_default("device"), help="auto, cpu or cuda[:N]")
        parser.add_argument("--dtype", default=harvest_default("dtype"), help="float32, bfloat16 or float16 (GPU)")
        parser.add_argument("--seed", type=int, default=harvest_default("seed"))
        parser.add_argument("--include-special", action="store_true",
                            help="keep BOS/EOS/PAD/CLS/SEP positions in statistics and examples")
        parser.add_argument("--corr-stride", type=int, default=harvest_default("corr_stride"),
                            help="correlation sums between each SAE's latents and the neurons of its hook over "
                                 "every n-th token (1: every token, 0: none)")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until the run is done")
        parser.add_argument("--inline", action="store_true", help="run every shard in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            run, created = self._create(opts)
        except (ModelLoadError, HookError, HarvestInputError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if not created:
            self.stdout.write(f"Run #{run.pk} with this configuration exists ({run.status}); not computed again.\n")
            if not (opts["wait"] and run.status not in {Run.Status.DONE}):
                return
        elif opts["inline"] or (opts["wait"] and not workers_alive()):
            self.stdout.write(f"Run #{run.pk}: {run.n_shards} shard(s), running in this process.\n")
            run_here(harvest_work, run.job, self.stdout)  # type: ignore[arg-type]
        else:
            run_queue_shards(run_id=run.pk, tasks=run.n_shards)
            self.stdout.write(f"Run #{run.pk}: queued {run.n_shards} shard(s) on the gpu queue.\n")
        if opts["wait"] and not opts["inline"] and run.job_id:
            follow(run.job_id, self.stdout)
        run.refresh_from_db()
        self.stdout.write(f"Run #{run.pk}: {run.status}.\n")

    def _create(self, opts: dict[str, Any]) -> tuple[Run, bool]:
        request = {**opts, "saes": opts["saes"].split(",")}
        return harvest_from_request(request)
