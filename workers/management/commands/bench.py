from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

BENCHMARKS = ["harvest"]


class Command(BaseCommand):
    help = "Run a benchmark; with --json the last line of stdout is one JSON object. Benchmarks: " + ", ".join(
        BENCHMARKS)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", choices=BENCHMARKS)
        parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
        parser.add_argument("--tokens", type=int, default=40_960, help="tokens per timed pass (harvest)")
        parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (harvest)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["name"] == "harvest":
            from workers.bench.harvest import run

            if opts["tokens"] < 1024:
                raise CommandError("--tokens must be at least 1024")
            result = run(tokens=opts["tokens"], rounds=opts["rounds"], log=self.stderr)
        if opts["json"]:
            self.stdout.write(json.dumps(result))
        else:
            for key, value in result.items():
                self.stdout.write(f"{key}: {value}")
