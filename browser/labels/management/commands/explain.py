from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from browser.catalog.models import Unit
from browser.labels.explain import ExplainerError, explainer, units_explain


class Command(BaseCommand):
    help = ("Write machine labels for the units of a source with the configured explainer (offline by "
            "default; BROWSER_EXPLAINER_URL selects an OpenAI-compatible endpoint).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--source", required=True, help="source name, e.g. blocks.3.mlp.hook_post")
        parser.add_argument("--limit", type=int, default=100, help="at most this many units (by index)")
        parser.add_argument("--overwrite", action="store_true", help="replace this explainer's earlier labels")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        units = Unit.objects.filter(source__model__name=opts["model"], source__name=opts["source"], dead=False,
                                    stats_run__isnull=False).select_related("source__model").order_by("index")
        if not units.exists():
            raise CommandError(f"no harvested unit in {opts['model']}/{opts['source']}")
        chosen = list(units[: opts["limit"]])
        name, _ = explainer()
        totals: dict[str, int] = {}
        try:
            for unit in tqdm(chosen, desc=name, unit="unit", file=sys.stderr):
                for key, value in units_explain(units=[unit], overwrite=opts["overwrite"]).items():
                    totals[key] = totals.get(key, 0) + value
        except ExplainerError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(", ".join(f"{k}: {v}" for k, v in totals.items()) + "\n")
