"""`manage.py bench NAME`: every module in `workers/bench/` with a `main` is a benchmark."""

from __future__ import annotations

import importlib
import json
import pkgutil
from types import ModuleType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import workers.bench


def benchmarks() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(workers.bench.__path__):
        module = importlib.import_module(f"workers.bench.{info.name}")
        if hasattr(module, "main"):
            found[info.name] = module
    return dict(sorted(found.items()))


class Command(BaseCommand):
    help = "Run a benchmark; with --json the last line of stdout is one JSON object."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
        sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
        for name, module in benchmarks().items():
            bench_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
            bench_parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
            module.add_arguments(bench_parser)

    def handle(self, *args: Any, **opts: Any) -> None:
        module = benchmarks()[opts["name"]]
        try:
            result = module.main(opts, self.stderr)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for key, value in result.items():
                self.stdout.write(f"{key}: {value}")
