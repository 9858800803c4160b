"""Compute one requested attribution graph on a worker and store its pruned nodes and edges."""

from __future__ import annotations

from typing import Any

import torch

from browser.catalog.models import Source
from browser.graphs.models import Graph
from browser.graphs.services import graph_claim, graph_fail, graph_finish
from workers.compute.attribution import AttributionGraph, build_graph
from workers.compute.graph_config import GraphConfig
from workers.compute.graph_scores import Pruned, graph_scores, prune
from workers.compute.steering import cpu_threads
from workers.jobs import Progress
from workers.pipeline.loader import device_for, model_on, source_sae

# One CPU thread: the backward passes are many small matmuls, and on a shared 2-core machine two
# threads measured 16x slower than one (spinning OpenMP workers); the steering pipeline does the same.
GRAPH_THREADS = 1


def _node(graph: AttributionGraph, pruned: Pruned, i: int) -> list[Any]:
    """[kind, layer, position, index, value, influence] of node ``i`` of the full graph."""
    layout, n_pos = graph.layout, len(graph.tokens)
    value, influence = round(float(graph.values[i]), 5), round(float(pruned.node_influence[i]), 6)
    if i < layout.units:
        layer, pos, index = (int(v) for v in graph.units[i])
        return ["unit", layer, pos, index, value, influence]
    i -= layout.units
    if i < layout.errors:
        return ["error", i // n_pos, i % n_pos, -1, value, influence]
    i -= layout.errors
    if i < layout.tokens:
        return ["token", -1, i, graph.tokens[i], value, influence]
    i -= layout.tokens
    return ["logit", -1, n_pos - 1, int(graph.logit_tokens[i]), value, round(float(graph.logit_probs[i]), 6)]


def graph_payload(graph: AttributionGraph, pruned: Pruned) -> tuple[list[Any], list[Any]]:
    """(nodes, edges) kept by pruning; edges as [source, target, weight] over the kept nodes' order."""
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    position = {node: k for k, node in enumerate(kept)}
    nodes = [_node(graph, pruned, i) for i in kept]
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources]
    order = weights.abs().argsort(descending=True).tolist()
    edges = [[position[int(sources[k])], position[int(targets[k])], round(float(weights[k]), 5)] for k in order
             if int(sources[k]) in position and int(targets[k]) in position]
    return nodes, edges


def graph_scores_of(graph: AttributionGraph, pruned: Pruned, config: GraphConfig) -> dict[str, Any]:
    replacement, completeness = graph_scores(graph.adjacency, graph.layout, graph.logit_probs)
    return {"replacement_score": round(replacement, 6), "completeness": round(completeness, 6),
            "kept_share": round(pruned.kept_share, 6), "selected_share": round(graph.selected_share, 6),
            "full_nodes": graph.layout.size, "nodes": int(pruned.node_mask.sum()),
            "edges": int(pruned.edge_mask.sum()), "node_threshold": config.node_threshold,
            "edge_threshold": config.edge_threshold,
            "timings": {k: round(v, 3) for k, v in graph.timings.items()}}


def graph_compute(*, graph_id: int, progress: Progress | None = None, device: str = "auto") -> None:
    """Claim, compute and store graph ``graph_id``; any error marks it failed and is re-raised."""
    if not graph_claim(graph_id=graph_id):
        return
    try:
        _compute(Graph.objects.select_related("model__tokenizer").get(pk=graph_id), progress, device)
    except Exception as exc:
        graph_fail(graph_id=graph_id, error=f"{type(exc).__name__}: {exc}")
        raise


def _compute(row: Graph, progress: Progress | None, device: str) -> None:
    device = device_for(device)
    model, _, tokenizer = model_on(row.model, device)
    ids = tokenizer(row.prompt)["input_ids"]
    config = GraphConfig.from_dict(row.config)
    saes = {layer: source_sae(Source.objects.get(model=row.model, name=name), device) for layer, name in config.saes}
    with cpu_threads(GRAPH_THREADS if device == "cpu" else None):
        graph = build_graph(model, torch.tensor(ids, device=device), config, progress, saes)
    pruned = prune(graph.adjacency, graph.layout, graph.logit_probs, config.node_threshold, config.edge_threshold)
    nodes, edges = graph_payload(graph, pruned)
    shown = row.model.tokenizer.tokens if row.model.tokenizer is not None else []

    def text(token: int) -> str:
        return shown[token] if token < len(shown) else tokenizer.decode([token])

    logits = [[int(t), text(int(t)), round(float(p), 6), round(float(v), 5)] for t, p, v in
              zip(graph.logit_tokens, graph.logit_probs, graph.values[graph.layout.size - graph.layout.logits:],
                  strict=True)]
    graph_finish(graph_id=row.pk, tokens=[[t, text(t)] for t in ids], logits=logits, nodes=nodes, edges=edges,
                 scores=graph_scores_of(graph, pruned, config))


def graph_check(*, graph_id: int, nodes: list[int], op: str = "zero", value: float = 0.0, target: int | None = None,
                device: str = "auto") -> dict[str, Any]:
    """Ablate or steer a stored graph's unit nodes (positions in ``Graph.nodes``) together: a target
    logit's change as the replacement model predicts it next to its real change
    (``workers.compute.graph_check``). ``target``: one of the graph's target tokens (default its top one)."""
    from workers.compute.graph_check import check_edit, node_check

    row = Graph.objects.select_related("model").get(pk=graph_id)
    if row.status != Graph.Status.DONE or not row.logits:
        raise ValueError(f"graph #{graph_id} is {row.status}: check it once it is done")
    if "imported" in row.config:
        raise ValueError(f"graph #{graph_id} was imported: it has no frozen settings to check it against")
    picked = [row.nodes[i] for i in nodes if 0 <= i < len(row.nodes)]
    if len(picked) != len(nodes) or not picked or any(node[0] != "unit" for node in picked):
        raise ValueError("only the graph's unit nodes (neurons, features) can be ablated or steered")
    targets = {int(entry[0]): str(entry[1]) for entry in row.logits}
    target = int(row.logits[0][0]) if target is None else int(target)
    if target not in targets:
        raise ValueError(f"token {target} is not one of graph #{graph_id}'s target logits")
    check_edit(op, float(value))
    device = device_for(device)
    model, _, tokenizer = model_on(row.model, device)
    config = GraphConfig.from_dict(row.config)
    saes = {layer: source_sae(Source.objects.get(model=row.model, name=name), device) for layer, name in config.saes}
    units = [(int(node[1]), int(node[2]), int(node[3])) for node in picked]
    with cpu_threads(GRAPH_THREADS if device == "cpu" else None):
        check = node_check(model, torch.tensor(tokenizer(row.prompt)["input_ids"], device=device), units, target,
                           saes, op=op, value=float(value))
    return {"graph": graph_id, "nodes": nodes, "op": op, "value": float(value), "target": target,
            "target_text": targets[target], "clean": round(check.clean, 5), "predicted": round(check.predicted, 5),
            "real": round(check.real, 5), "terms": [round(t, 5) for t in check.terms]}
