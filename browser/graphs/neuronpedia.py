"""A graph as Neuronpedia's attribution-graph JSON (the layout circuit-tracer writes for its viewer:
``metadata``, ``qParams``, ``nodes``, ``links``), so a graph made here opens in that viewer.

Units (neurons and SAE features) are written as the viewer's feature nodes (feature_type "cross layer
transcoder", the one kind it draws as a feature; ``feature`` is the Cantor pairing of layer and index,
as circuit-tracer does), the rest of a layer's MLP output as its "mlp reconstruction error" nodes;
labels go to ``clerp``. Supernodes become ``qParams.supernodes`` and their members ``pinnedIds``.
"""

from __future__ import annotations

from typing import Any

from browser.graphs.models import Graph
from browser.graphs.selectors import graph_detail

SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node: dict[str, Any], n_layers: int, top_logit: int) -> dict[str, Any]:
    kind, layer, pos, index = node["kind"], node["layer"], node["position"], node["index"]
    base = {"ctx_idx": pos, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "clerp": "", "influence": node["influence"], "activation": None}
    if kind == "unit":
        return {**base, "node_id": f"{layer}_{index}_{pos}", "feature": _cantor(layer, index), "layer": str(layer),
                "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{index}-0",
                "clerp": node.get("label") or node.get("uid", ""), "activation": node["value"]}
    if kind == "error":
        return {**base, "node_id": f"{layer}_-1_{pos}", "feature": -1, "layer": str(layer),
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_-1-{pos}"}
    if kind == "token":
        return {**base, "node_id": f"E_{index}_{pos}", "feature": pos, "layer": "E", "feature_type": "embedding",
                "jsNodeId": f"E_{index}-{pos}"}
    logit_layer = str(n_layers + 1)
    return {**base, "node_id": f"{logit_layer}_{index}_{pos}", "feature": index, "layer": logit_layer,
            "feature_type": "logit", "token_prob": node["influence"], "is_target_logit": index == top_logit,
            "jsNodeId": f"L_{index}-{pos}", "influence": None,
            "clerp": f'Output "{node.get("target", "")}" (p={node["influence"]:.3f})'}


def graph_neuronpedia(graph: Graph) -> dict[str, Any]:
    detail = graph_detail(graph)
    texts = {entry["id"]: entry["text"] for entry in detail["logits"]}
    top_logit = detail["logits"][0]["id"] if detail["logits"] else -1
    for node in detail["nodes"]:
        if node["kind"] == "logit":
            node["target"] = texts.get(node["index"], "")
    nodes = [_node(node, detail["n_layers"], top_logit) for node in detail["nodes"]]
    ids = [n["node_id"] for n in nodes]
    supernodes = [[s["name"], *(ids[i] for i in s["nodes"])] for s in detail["supernodes"]]
    return {
        "metadata": {"slug": f"{graph.model.name}-graph-{graph.pk}", "scan": graph.model.name,
                     "transcoder_list": [name for _, name in graph.config.get("saes", [])],
                     "prompt_tokens": [t["text"] for t in detail["tokens"]], "prompt": graph.prompt,
                     "node_threshold": graph.scores.get("node_threshold"), "schema_version": SCHEMA_VERSION},
        "qParams": {"pinnedIds": sorted({member for group in supernodes for member in group[1:]}),
                    "supernodes": supernodes, "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": ids[e["source"]], "target": ids[e["target"]], "weight": e["weight"]}
                  for e in detail["edges"]],
    }
