from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.compression import CompressionConfig
from workers.pipeline.compression import compression_register
from workers.pipeline.toy import ToyModelError


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


class Command(BaseCommand):
    help = (
        "The compression-hypothesis curve: train hidden-ReLU toy models on features in pairs whose presences "
        "have correlation rho (-1: the lowest possible, never together; 1: always together), for each feature "
        "probability p, several seeds each, and register the result as a toy model whose page draws distinct "
        "directions per dimension, pair cosine and features per neuron against rho."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="the toy model's name")
        parser.add_argument("--pairs", type=int, default=10, help="feature pairs (n = 2 x pairs)")
        parser.add_argument("--m", type=int, default=5, help="hidden neurons")
        parser.add_argument("--p", default="0.05,0.1", help="feature probabilities, one curve each")
        parser.add_argument("--rho", default="-1,0,0.25,0.5,0.75,1",
                            help="presence correlations (-1: the lowest p allows)")
        parser.add_argument("--instances", type=int, default=4, help="seeds per setting")
        parser.add_argument("--steps", type=int, default=4000)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            config = CompressionConfig(n_pairs=opts["pairs"], n_hidden=opts["m"], probabilities=_floats(opts["p"]),
                                       correlations=_floats(opts["rho"]), instances=opts["instances"],
                                       steps=opts["steps"], seed=opts["seed"])
            model = compression_register(config=config, name=opts["name"], progress=lambda done, total: self.stdout.write(
                f"step {done}/{total}\n"))
        except (ToyModelError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        for row in model.config["compression"]["curve"]:
            d = row["distinct_per_dim"]
            self.stdout.write(f"p {row['p']:g} rho {row['rho']:+.3f}: distinct directions per dim "
                              f"{d['mean']:.2f} ({d['min']:.2f}-{d['max']:.2f})\n")
        self.stdout.write(f"Registered {model.name}: /m/{model.name}/toy/\n")
