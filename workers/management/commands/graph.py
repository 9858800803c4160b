from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.graphs.models import Graph
from browser.graphs.services import graph_request
from browser.runs.models import Job
from workers.cli import submit
from workers.compute.graph_config import BASES
from workers.pipeline.models import model_get_or_register
from workers.tasks_graphs import compute_graph, graph_work


class Command(BaseCommand):
    help = ("Compute the attribution graph of a prompt's next token (neurons, token embeddings, target logits; "
            "edges = direct effects on the model with attention, norms and neuron gates frozen) and store it; "
            "the same settings again give the stored graph.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="a registered model or a packaged alias (smollm2-135m)")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--basis", default="neurons", help=f"the units: {', '.join(BASES)}")
        parser.add_argument("--target", help="the target token (id or exact string); default: the top logits")
        parser.add_argument("--max-units", type=int, help="units that become nodes (default 256)")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until done")
        parser.add_argument("--inline", action="store_true", help="compute in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            model = model_get_or_register(opts["model"])
            graph, created = graph_request(model_name=model.name, prompt=opts["prompt"], basis=opts["basis"],
                                           target=opts["target"], max_units=opts["max_units"])
        except (ValidationError, ValueError) as exc:
            message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            raise CommandError(message) from None
        if graph.job is not None and (created or graph.status == Graph.Status.QUEUED and (opts["inline"] or opts["wait"])):
            job = submit(compute_graph, graph_work, graph.job, wait=opts["wait"],
                         inline=opts["inline"], stdout=self.stdout)  # type: ignore[arg-type]
            if job.status == Job.Status.FAILED:
                raise CommandError(job.error.strip().splitlines()[-1] if job.error else "the graph failed")
        graph.refresh_from_db()
        scores = graph.scores
        self.stdout.write(f"graph #{graph.pk} ({graph.status}): /graphs/{graph.pk}/"
                          + (f"  nodes {scores['nodes']}, edges {scores['edges']}, replacement "
                             f"{scores['replacement_score']:.3f}, completeness {scores['completeness']:.3f}, "
                             f"kept share {scores['kept_share']:.3f}" if scores else "") + "\n")
