from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.exceptions import ValidationError as ApiValidationError

from browser.labels.apis import parse_label_file
from browser.labels.services import labels_import


class Command(BaseCommand):
    help = ("Import labels from a CSV (columns unit,text[,tags][,confidence]) or JSONL file as one user; every "
            "row is checked first and nothing is written if any row is bad.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path")
        parser.add_argument("--user", required=True, help="the labels' author (an annotator)")
        parser.add_argument("--dry-run", action="store_true", help="check only")

    def handle(self, *args: Any, **opts: Any) -> None:
        path = Path(opts["path"])
        if not path.is_file():
            raise CommandError(f"no file at {path}")
        user = get_user_model().objects.filter(username=opts["user"]).first()
        if user is None:
            raise CommandError(f"no user named {opts['user']!r}")
        try:
            rows = parse_label_file(path.name, path.read_bytes())
            report = labels_import(rows=rows, user=user, dry_run=opts["dry_run"])
        except ApiValidationError as exc:
            messages = exc.detail.get("file", []) if isinstance(exc.detail, dict) else exc.detail
            messages = [messages] if isinstance(messages, str) else messages
            raise CommandError("; ".join(str(m) for m in messages)) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        for error in report.errors:
            self.stderr.write(f"line {error['line']}: {error['error']}\n")
        if report.errors:
            raise CommandError(f"{len(report.errors)} bad row(s) of {report.rows}; nothing imported")
        verb = "would import" if report.dry_run else "imported"
        self.stdout.write(f"{verb} {report.rows} label(s): {report.created} new, {report.updated} edited.\n")
