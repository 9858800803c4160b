from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Model
from workers.pipeline.saes import EXPORT_LAYOUTS, sae_export, sae_find


class Command(BaseCommand):
    help = ("Export a registered SAE or transcoder as an SAELens directory (cfg.json + sae_weights.safetensors), "
            "or a transcoder as circuit-tracer's per-layer file (--layout circuit-tracer: layer_N.safetensors).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the SAE source's name")
        parser.add_argument("path", help="the directory to write (created; must be empty if it exists)")
        parser.add_argument("--model", required=True, help="the registered model the SAE belongs to")
        parser.add_argument("--layout", default="saelens", choices=list(EXPORT_LAYOUTS),
                            help="saelens (SAEs and transcoders) or circuit-tracer (transcoders)")

    def handle(self, *args: Any, **opts: Any) -> None:
        model = Model.objects.filter(name=opts["model"]).first()
        if model is None:
            raise CommandError(f"no registered model named {opts['model']!r}")
        try:
            written = sae_export(sae_row=sae_find(model, opts["name"]), path=Path(opts["path"]), layout=opts["layout"])
        except (OSError, ValueError) as exc:
            raise CommandError(f"SAE not exported: {exc}") from None
        self.stdout.write(f"Wrote {' and '.join(str(path) for path in written)}.\n")
