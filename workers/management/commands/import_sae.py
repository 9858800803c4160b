from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.loading import ModelLoadError
from workers.pipeline.models import model_get_or_register
from workers.pipeline.saes import sae_import


class Command(BaseCommand):
    help = (
        "Import an SAE from an SAELens directory (cfg.json + sae_weights.safetensors) or an EleutherAI "
        "sparsify directory (cfg.json + sae.safetensors) and register its features as a source."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the SAE's directory")
        parser.add_argument("--model", required=True, help="a registered model or packaged alias")
        parser.add_argument("--name", required=True, help="the new source's name (unique per model)")
        parser.add_argument("--hook", default="",
                            help="hook point, e.g. blocks.3.mlp.hook_post (required for sparsify; "
                                 "overrides the hook_name of an SAELens cfg.json)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            model = model_get_or_register(opts["model"])
            row = sae_import(model=model, path=Path(opts["path"]), name=opts["name"], hook=opts["hook"])
        except (ModelLoadError, ValueError) as exc:
            raise CommandError(f"SAE not imported: {exc}") from None
        self.stdout.write(f"Imported {row.architecture} SAE {model.name}/{row.source.name}: {row.d_sae} features "
                          f"at {row.source.hook_point} (d_in {row.d_in}).\n")
