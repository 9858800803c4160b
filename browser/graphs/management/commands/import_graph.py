from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.graphs.neuronpedia import MAX_IMPORT_BYTES
from browser.graphs.services import graph_import


class Command(BaseCommand):
    help = ("Import an attribution graph in Neuronpedia's graph JSON (what circuit-tracer's create_graph_files "
            "writes, Neuronpedia's graph download, or this browser's /api/v1/graphs/<id>/neuronpedia/) as a graph of "
            "a registered model; the same file again gives the stored graph. A malformed file stores nothing.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the graph JSON file")
        parser.add_argument("--model", help="a registered model (default: the one the file's metadata names)")
        parser.add_argument("--user", help="the importing user (its supernodes need an annotator)")

    def handle(self, *args: Any, **opts: Any) -> None:
        path = Path(opts["path"])
        if not path.is_file():
            raise CommandError(f"no file at {path}")
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise CommandError(f"{path} is over {MAX_IMPORT_BYTES // 2**20} MiB, the most a graph file may be")
        user = None
        if opts["user"]:
            user = get_user_model().objects.filter(username=opts["user"]).first()
            if user is None:
                raise CommandError(f"no user {opts['user']!r}")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not JSON: {exc}") from None
        try:
            graph, created, notes = graph_import(data=data, model_name=opts["model"], user=user)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        self.stdout.write(f"graph #{graph.pk} ({'imported' if created else 'already there'}): /graphs/{graph.pk}/  "
                          f"nodes {len(graph.nodes)}, edges {len(graph.edges)}, basis {graph.basis}\n")
        for note in notes:
            self.stdout.write(f"  {note}\n")
