from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from browser.catalog.models import Model
from browser.imports.neuronpedia import neuronpedia_import


def batch_paths(paths: list[str]) -> list[Path]:
    """The files named, a directory standing for every batch-*.json in it (in batch order)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            batches = sorted(path.glob("batch-*.json"), key=lambda p: (len(p.name), p.name))
            if not batches:
                raise CommandError(f"{path} holds no batch-*.json file")
            found += batches
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"no file or directory at {path}")
    return found


class Command(BaseCommand):
    help = ("Import Neuronpedia upload batches (SAEDashboard's neuronpedia runner output: features with "
            "activations, logit effects, histograms and explanations) of one SAE. Every file is checked first; "
            "nothing is written if any is bad. Importing the same files again changes nothing.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", help="batch JSON files, or directories of batch-*.json")
        parser.add_argument("--user", required=True, help="the importing curator (author of human explanations)")
        parser.add_argument("--model", help="model name (default: the batch's model_id)")
        parser.add_argument("--source", help="source name (default: the batch's layer, e.g. 6-res-jb, or sae_id)")
        parser.add_argument("--kind", default=Model.Kind.CAUSAL_LM, choices=Model.Kind.values, help="model kind")
        parser.add_argument("--dry-run", action="store_true", help="check and count only")

    def handle(self, *args: Any, **opts: Any) -> None:
        paths = batch_paths(opts["paths"])
        user = get_user_model().objects.filter(username=opts["user"]).first()
        if user is None:
            raise CommandError(f"no user named {opts['user']!r}")
        bar = tqdm(desc="import", unit="feature", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            report = neuronpedia_import(files=paths, names=[str(p) for p in paths], user=user,
                                        model_name=opts["model"], source_name=opts["source"],
                                        model_kind=opts["kind"], dry_run=opts["dry_run"], progress=progress)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}\n")
        if report.errors:
            for e in report.errors:
                where = ", ".join(p for p in (e["file"], f"feature {e['feature']}" if e["feature"] is not None
                                              else "", e["field"]) if p)
                self.stderr.write(f"{where}: {e['error']}\n")
            raise CommandError(f"{len(report.errors)} problem(s) found; nothing was imported")
        verb = "would import" if report.dry_run else "imported"
        self.stdout.write(
            f"{verb} {report.features} feature(s) into {report.model}/{report.source} ({report.replaced} replaced): "
            f"{report.examples} examples, {report.contexts_created} new contexts, labels {report.labels_created} "
            f"new, {report.labels_updated} updated, {report.labels_unchanged} unchanged\n")
