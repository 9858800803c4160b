from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.toy import KINDS, ToyConfig
from workers.pipeline.toy import MAX_INPUTS, TRUE_FEATURES, ToyModelError, toy_harvest, toy_model_register


class Command(BaseCommand):
    help = (
        "Train a toy model of superposition (Elhage et al. 2022) and register it as a model whose "
        "units are its hidden neurons, with the paper's metrics and each neuron's true features."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kind", choices=KINDS, default="hidden_relu",
                            help="hidden_relu: h = ReLU(Wx) (neurons); relu_output: x' = ReLU(W^T W x + b)")
        parser.add_argument("--n", type=int, default=20, help="number of sparse features")
        parser.add_argument("--m", type=int, default=5, help="hidden dimensions (neurons)")
        parser.add_argument("--p", type=float, default=0.1, help="probability that a feature is present")
        parser.add_argument("--decay", type=float, default=1.0, help="feature f's importance is decay**f")
        parser.add_argument("--instances", type=int, default=8, help="initialisations trained; the best is kept")
        parser.add_argument("--steps", type=int, default=10_000, help="AdamW steps (batch 1024, lr 1e-3)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--name", required=True, help="the model's name in the browser")
        parser.add_argument("--harvest", type=int, default=0, metavar="N",
                            help="then harvest the neurons over N synthetic inputs (examples for the unit pages)")
        parser.add_argument("--harvest-seed", type=int, default=1, help="seeds the synthetic inputs")

    def handle(self, *args: Any, **opts: Any) -> None:
        if not 0 <= opts["harvest"] <= MAX_INPUTS:
            raise CommandError(f"--harvest takes 0..{MAX_INPUTS} inputs (got {opts['harvest']})")
        try:
            config = ToyConfig(kind=opts["kind"], n_features=opts["n"], n_hidden=opts["m"],
                               feature_probability=opts["p"], importance_decay=opts["decay"],
                               n_instances=opts["instances"], steps=opts["steps"], seed=opts["seed"])
            model = toy_model_register(config=config, name=opts["name"], progress=self._progress)
            run = None
            if opts["harvest"]:
                run = toy_harvest(model=model, n_inputs=opts["harvest"], seed=opts["harvest_seed"])
        except (ToyModelError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        summary = model.config
        self.stdout.write(
            f"Registered {model.name}: {config.kind}, {config.n_features} features in {config.n_hidden} dimensions, "
            f"{summary['represented_features']} represented, {summary['dimensions_per_feature']:.3f} dimensions "
            f"per feature (instance {summary['instance']}, loss {summary['loss'][summary['instance']]:.3g}).\n"
        )
        if config.kind == "hidden_relu":
            self.stdout.write(f"Each neuron's true features are stored as {TRUE_FEATURES!r} scores.\n")
        if run is not None:
            self.stdout.write(f"Harvested run #{run.pk} over {opts['harvest']} synthetic inputs; score it with "
                              f"manage.py score --run {run.pk}.\n")

    def _progress(self, step: int, steps: int) -> None:
        self.stdout.write(f"step {step}/{steps}\n")
