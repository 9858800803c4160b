"""Causal checks of a graph's nodes on request: validate which nodes (unit nodes, or a supernode's),
then ask a worker (the compute rules of ``browser.api.compute``) for the predicted and real change
of the target logit when they are zero-ablated together."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from browser.api.compute import compute_call
from browser.graphs.models import Graph, Supernode

TASK = "workers.tasks_graphs.check_graph"
MAX_CHECK_NODES = 64


def check_nodes(*, graph: Graph, nodes: list[int] | None = None, supernode: str | None = None) -> list[int]:
    """The node positions to ablate: given, or a supernode's; only unit nodes of a finished graph."""
    if graph.status != Graph.Status.DONE:
        raise ValidationError(f"graph #{graph.pk} is {graph.status}: check it once it is done")
    if supernode:
        group = Supernode.objects.filter(graph=graph, name=supernode).first()
        if group is None:
            raise ValidationError(f"graph #{graph.pk} has no supernode {supernode[:200]!r}")
        nodes = list(group.nodes)
    if not nodes or len(nodes) > MAX_CHECK_NODES:
        raise ValidationError(f"name 1 to {MAX_CHECK_NODES} nodes (or a supernode) to ablate")
    for node in nodes:
        if not 0 <= node < len(graph.nodes) or graph.nodes[node][0] != "unit":
            raise ValidationError(f"node {node} is not a unit node of graph #{graph.pk}: only neurons and "
                                  "features can be ablated")
    return sorted(set(nodes))


def check_run(*, graph: Graph, nodes: list[int]) -> dict[str, Any]:
    """Queue the check and wait for it (the caller checked user and throttle); ComputeError if no answer."""
    return dict(compute_call(TASK, [graph.pk, nodes]))
