from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.synthetic import GENERATORS
from workers.pipeline.synthetic import synthetic_register


class Command(BaseCommand):
    help = (
        "Register a synthetic set of activations with known features (a model of kind synthetic whose "
        "neurons carry their true features), for SAE sweeps and score checks. Parameters as JSON, e.g. "
        "--kind superposition --params '{\"n\": 512, \"m\": 64, \"l0\": 4, \"seed\": 0}'; --kind toy takes a "
        "toy-model config (n_features, n_hidden, feature_probability, kind, steps ...)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", required=True, choices=[*GENERATORS, "toy"])
        parser.add_argument("--params", default="{}", help="the generator's keyword parameters as a JSON object")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            params = json.loads(opts["params"])
            if not isinstance(params, dict):
                raise ValueError("--params must be a JSON object")
            model = synthetic_register(name=opts["name"], kind=opts["kind"], params=params)
        except ValueError as exc:  # json.JSONDecodeError is one
            raise CommandError(str(exc)) from None
        cfg = model.config
        self.stdout.write(f"Registered {model.name}: {cfg['n_features']} true features in {model.d_model} dims, "
                          f"true L0 {cfg['true_l0']:.3g}.\n")
