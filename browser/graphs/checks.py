"""Causal checks of a graph's nodes on request: validate which nodes (unit nodes, or a supernode's),
the edit (ablate, scale, clamp, steer) and the target logit, then ask a worker (the compute rules of
``browser.api.compute``) for the predicted and real change of the target logit when the nodes are
edited together. One forward and a few backward passes: the request waits for it, no job."""

from __future__ import annotations

import math
import re
from typing import Any

from django.core.exceptions import ValidationError

from browser.api.compute import compute_call
from browser.graphs.models import Graph, Supernode
from workers.compute.graph_config import CHECK_OPS, MAX_CHECK_VALUE

TASK = "workers.tasks_graphs.check_graph"
MAX_CHECK_NODES = 64
# A node named as in Neuronpedia's graph JSON (browser.graphs.neuronpedia): layer_index_position.
NODE_ID = re.compile(r"^(\d+)_(\d+)_(\d+)$")
OP_NAMES = {"zero": "ablate (set to 0)", "scale": "scale by", "clamp": "set to", "steer": "add"}


def _position(graph: Graph, node: int | str) -> int:
    """A node given by its position in ``Graph.nodes`` or by its Neuronpedia id -> its position."""
    if isinstance(node, int):
        if not 0 <= node < len(graph.nodes):
            raise ValidationError(f"node {node} is not a node of graph #{graph.pk} (its nodes are 0 to "
                                  f"{len(graph.nodes) - 1})")
        return node
    match = NODE_ID.match(node)
    if match is None:
        raise ValidationError(f"node {node[:50]!r} is neither a node number nor a unit's id layer_index_position")
    layer, index, pos = (int(v) for v in match.groups())
    for k, row in enumerate(graph.nodes):
        if row[0] == "unit" and (row[1], row[2], row[3]) == (layer, pos, index):
            return k
    raise ValidationError(f"node {node} is not in graph #{graph.pk} (no unit {index} of layer {layer} at "
                          f"position {pos}); is it a node of another graph?")


def check_nodes(*, graph: Graph, nodes: list[int | str] | None = None, supernode: str | None = None) -> list[int]:
    """The node positions to edit: given, or a supernode's; only unit nodes of a finished graph."""
    if graph.status != Graph.Status.DONE:
        raise ValidationError(f"graph #{graph.pk} is {graph.status}: check it once it is done")
    if "imported" in graph.config:
        raise ValidationError(f"graph #{graph.pk} was imported: it has no frozen settings to check it against")
    if supernode:
        group = Supernode.objects.filter(graph=graph, name=supernode).first()
        if group is None:
            raise ValidationError(f"graph #{graph.pk} has no supernode {supernode[:200]!r}")
        nodes = list(group.nodes)
    if not nodes or len(nodes) > MAX_CHECK_NODES:
        raise ValidationError(f"name 1 to {MAX_CHECK_NODES} nodes (or a supernode) to ablate or steer")
    positions = [_position(graph, node) for node in nodes]
    for position in positions:
        if graph.nodes[position][0] != "unit":
            raise ValidationError(f"node {position} is not a unit node of graph #{graph.pk} (it is its "
                                  f"{graph.nodes[position][0]}): only neurons and features can be ablated or steered")
    return sorted(set(positions))


def check_edit(*, op: str, value: float | None) -> float:
    """The edit's value (0 for zero); a clear error for an unknown op or a value out of bounds."""
    if op not in CHECK_OPS:
        raise ValidationError(f"unknown edit {op[:20]!r}: one of {', '.join(CHECK_OPS)}")
    if op == "zero":
        return 0.0
    if value is None:
        raise ValidationError(f"the edit {op} needs a value")
    if not math.isfinite(value) or abs(value) > MAX_CHECK_VALUE:
        raise ValidationError(f"the edit's value must be a finite number within +-{MAX_CHECK_VALUE:g}")
    return float(value)


def check_target(*, graph: Graph, target: str | int | None) -> int:
    """One of the graph's target logits, by token id or by its text (default: the top one)."""
    if target is None or target == "":
        return int(graph.logits[0][0])
    for token, text, *_ in graph.logits:
        if str(target) in (str(token), text):
            return int(token)
    raise ValidationError(f"{str(target)[:100]!r} is not one of graph #{graph.pk}'s target logits "
                          f"({', '.join(repr(entry[1]) for entry in graph.logits)})")


def check_run(*, graph: Graph, nodes: list[int], op: str = "zero", value: float = 0.0,
              target: int | None = None) -> dict[str, Any]:
    """Queue the check and wait for it (the caller checked user and throttle); ComputeError if no answer."""
    return dict(compute_call(TASK, [graph.pk, nodes, op, value, target]))
