from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Model, Sae
from browser.catalog.services import sae_quality_merge
from workers.compute.saebench import core_output, read_core


class Command(BaseCommand):
    help = (
        "Write an SAE's held-out quality as a SAEBench core-eval result JSON (export), or read one into the "
        "SAE's quality under 'saebench' (import), so results travel between the product and SAEBench. "
        "export-hook HOOK DIR writes one result per SAE on the hook from the side-by-side measures of "
        "`sae_core` (the same held-out tokens for every SAE), as DIR/<sae>_eval_results.json."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["export", "import", "export-hook"])
        parser.add_argument("sae", help="the SAE source's name (export-hook: the hook point)")
        parser.add_argument("path", help="the JSON file to write or read (export-hook: a directory)")
        parser.add_argument("--model", required=True)

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "export-hook":
            self._export_hook(opts["model"], opts["sae"], Path(opts["path"]))
            return
        row = Sae.objects.select_related("source").filter(source__model__name=opts["model"],
                                                          source__name=opts["sae"]).first()
        if row is None or not Model.objects.filter(name=opts["model"]).exists():
            raise CommandError(f"no SAE {opts['sae']!r} on model {opts['model']!r}")
        path = Path(opts["path"])
        if opts["action"] == "export":
            data = core_output(row.quality, row.cfg, model_name=opts["model"], sae_id=row.source.name)
            path.write_text(json.dumps(data, indent=2))
            self.stdout.write(f"Wrote {path} ({sum(len(v) for v in data['eval_result_metrics'].values())} metrics).\n")
            return
        try:
            read = read_core(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        sae_quality_merge(sae=row, stats={"saebench": read})
        self.stdout.write(f"Read {len(read)} metrics into {row.source.name}'s quality (saebench).\n")

    def _export_hook(self, model: str, hook: str, out: Path) -> None:
        rows = list(Sae.objects.select_related("source").filter(source__model__name=model, source__hook_point=hook)
                    .order_by("source__name"))
        measured = [row for row in rows if isinstance(row.quality.get("core"), dict)]
        if not measured:
            raise CommandError(f"no SAE on {hook} of {model!r} measured by sae_core (run it first)"
                               if rows else f"no SAE on {hook} of {model!r}")
        out.mkdir(parents=True, exist_ok=True)
        for row in measured:
            data = core_output(row.quality["core"], row.cfg, model_name=model, sae_id=row.source.name)
            (out / f"{row.source.name}_eval_results.json").write_text(json.dumps(data, indent=2))
        skipped = len(rows) - len(measured)
        self.stdout.write(f"Wrote {len(measured)} SAEBench core results to {out}"
                          + (f" ({skipped} SAE(s) not measured by sae_core left out)" if skipped else "") + ".\n")
