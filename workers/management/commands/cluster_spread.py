from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.pipeline.cluster_spread import SpreadInputError, cluster_spread_compute


class Command(BaseCommand):
    help = (
        "How much context_cluster_polysemanticity moves with its k-means seed and its sample of examples "
        "(bootstrap), for a seeded sample of one source's scored units of a run, and the score of random units "
        "(random windows of the corpus) as a baseline; stored as context_cluster_spread scores and drawn on the "
        "source page."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run", type=int, required=True, help="a scored harvest run")
        parser.add_argument("--source", required=True, help="the source's name, e.g. blocks.3.mlp.hook_post")
        parser.add_argument("--units", type=int, default=48, help="units sampled")
        parser.add_argument("--seeds", type=int, default=5)
        parser.add_argument("--resamples", type=int, default=20)
        parser.add_argument("--draws", type=int, default=32, help="random units in the baseline")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            s = cluster_spread_compute(run_id=opts["run"], source_name=opts["source"], units=opts["units"],
                                       seeds=opts["seeds"], resamples=opts["resamples"], draws=opts["draws"],
                                       seed=opts["seed"])
        except SpreadInputError as exc:
            raise CommandError(str(exc)) from None
        b = s["baseline"]
        self.stdout.write(f"{s['units']} units: median bootstrap std {s['median_sample_std']:.3f}, median seed range "
                          f"{s['median_seed_range']:.3f}; random units score {b['mean']:.3f} "
                          f"(5-95%: {b['p5']:.3f}-{b['p95']:.3f}, {b['n']} windows each)\n")
