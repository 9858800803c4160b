from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.hooks import HookError
from workers.compute.loading import PACKAGED, ModelLoadError
from workers.pipeline.models import model_register


class Command(BaseCommand):
    help = ("Register a model: a packaged alias (" + ", ".join(PACKAGED) + "), a local directory, a .gguf file or a "
            "hub id ORG/NAME (read from the local Hugging Face cache, HF_HUB_CACHE or HF_HOME, and downloaded only "
            "when missing and online).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("location", help="packaged alias, local path or hub id (e.g. google/gemma-2-2b)")
        parser.add_argument("--name", help="the model's name in the browser (default: from the location)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            model = model_register(location=opts["location"], name=opts["name"])
        except (ModelLoadError, HookError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Registered {model.name}: {model.architecture} {model.kind}, {model.n_layers} layers, "
            f"d_model {model.d_model}, {model.d_mlp} MLP neurons per layer.\n"
        )
