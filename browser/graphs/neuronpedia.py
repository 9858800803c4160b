"""A graph as Neuronpedia's attribution-graph JSON (the layout circuit-tracer writes for its viewer:
``metadata``, ``qParams``, ``nodes``, ``links``), so a graph made here opens in that viewer, and such a
file read back (``parse_neuronpedia``), so a graph made by circuit-tracer or Neuronpedia opens here.

Units (neurons and SAE features) are written as the viewer's feature nodes (feature_type "cross layer
transcoder", the one kind it draws as a feature; ``feature`` is the Cantor pairing of layer and index,
as circuit-tracer does), the rest of a layer's MLP output as its "mlp reconstruction error" nodes;
labels go to ``clerp``. Supernodes become ``qParams.supernodes`` and their members ``pinnedIds``.
A logit node's ``activation`` is its logit. ``metadata.neuron_browser`` (which the viewer ignores)
carries what its fields cannot: the basis, the SAE of each layer, the prompt's token ids and the scores,
so an export read back is the same graph.

Reading: feature nodes (any ``feature_type`` naming a transcoder, SAE or feature) become unit nodes,
``node_id`` ``layer_index_position`` giving the index; "mlp reconstruction error" nodes error nodes;
"embedding" nodes (``E_token_position``) token nodes; "logit" nodes logit nodes (``token_prob`` their
probability). Every link must join two nodes of the file. A malformed file raises
``GraphFileError`` naming the first problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from browser.graphs.models import Graph
from browser.graphs.selectors import graph_detail

SCHEMA_VERSION = 1
EXTENSION = "neuron_browser"
MAX_IMPORT_BYTES = 32 * 1024 * 1024
MAX_IMPORT_NODES = 50_000
MAX_IMPORT_LINKS = 1_000_000
MAX_PROMPT_TOKENS = 4096


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
            "jsNodeId": f"L_{index}-{pos}", "influence": None, "activation": node["value"],
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
                     "node_threshold": graph.scores.get("node_threshold"), "schema_version": SCHEMA_VERSION,
                     EXTENSION: {"model": graph.model.name, "basis": graph.basis,
                                 "saes": [list(entry) for entry in graph.config.get("saes", [])],
                                 "token_ids": [t["id"] for t in detail["tokens"]], "scores": graph.scores}},
        "qParams": {"pinnedIds": sorted({member for group in supernodes for member in group[1:]}),
                    "supernodes": supernodes, "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": ids[e["source"]], "target": ids[e["target"]], "weight": e["weight"]}
                  for e in detail["edges"]],
    }


class GraphFileError(ValueError):
    """A file that is not a readable attribution graph (the message names the first problem)."""


@dataclass
class ParsedGraph:
    """A Neuronpedia graph file as ``Graph`` rows (``nodes``/``edges`` in the stored layout)."""

    prompt: str
    scan: str
    slug: str
    tokens: list[list[Any]]
    logits: list[list[Any]]
    nodes: list[list[Any]]
    edges: list[list[Any]]
    labels: dict[str, str]  # node position -> the file's clerp, where it has one
    supernodes: list[tuple[str, list[int]]]
    extension: dict[str, Any] = field(default_factory=dict)
    node_threshold: float | None = None


_FEATURE = re.compile(r"^(\d+)_(\d+)_(\d+)$")
_EMBEDDING = re.compile(r"^E_(\d+)_(\d+)$")
_LOGIT = re.compile(r"^(\d+)_(\d+)_(\d+)$")
_OUTPUT = re.compile(r'^Output "(.*)" \(p=')
FEATURE_TYPES = ("cross layer transcoder", "transcoder", "per layer transcoder", "sae", "feature")


def _number(value: Any, where: str, *, optional: bool = False) -> float:
    if value is None and optional:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GraphFileError(f"{where} must be a finite number (got {str(value)[:40]!r})")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise GraphFileError(f"{where} must be a whole number >= 0 (got {str(value)[:40]!r})")
    return value


def _node_row(node: Any, k: int, n_pos: int) -> tuple[list[Any], str]:
    """([kind, layer, position, index, value, influence], clerp) of the file's node ``k``."""
    if not isinstance(node, dict):
        raise GraphFileError(f"nodes[{k}] is not an object")
    node_id, kind = node.get("node_id"), node.get("feature_type")
    if not isinstance(node_id, str) or not node_id:
        raise GraphFileError(f"nodes[{k}] has no node_id")
    where = f"node {node_id[:60]!r}"
    if not isinstance(kind, str):
        raise GraphFileError(f"{where} has no feature_type")
    pos = _int(node.get("ctx_idx"), f"{where}: ctx_idx")
    if pos >= n_pos:
        raise GraphFileError(f"{where} is at position {pos}, but the prompt has {n_pos} tokens")
    influence = _number(node.get("influence"), f"{where}: influence", optional=True)
    value = _number(node.get("activation"), f"{where}: activation", optional=True)
    clerp = str(node["clerp"]) if isinstance(node.get("clerp"), str) else ""
    kind = kind.strip().lower()
    if kind in FEATURE_TYPES or "transcoder" in kind:
        match = _FEATURE.match(node_id)
        if match is None:
            raise GraphFileError(f"{where}: a feature's node_id is layer_feature_position")
        layer = _int(node.get("layer", match.group(1)), f"{where}: layer")
        return ["unit", layer, pos, int(match.group(2)), value, influence], clerp
    if kind in ("mlp reconstruction error", "mlp error", "error"):
        return ["error", _int(node.get("layer"), f"{where}: layer"), pos, -1, value, influence], ""
    if kind == "embedding":
        match = _EMBEDDING.match(node_id)
        if match is None:
            raise GraphFileError(f"{where}: an embedding's node_id is E_token_position")
        return ["token", -1, pos, int(match.group(1)), value, influence], ""
    if kind == "logit":
        match = _LOGIT.match(node_id)
        token = int(match.group(2)) if match is not None else _int(node.get("feature"), f"{where}: feature")
        probability = _number(node.get("token_prob", 0.0), f"{where}: token_prob")
        return ["logit", -1, pos, token, value, probability], clerp
    raise GraphFileError(f"{where} has feature_type {kind[:40]!r}; known: a transcoder or SAE feature, "
                         "mlp reconstruction error, embedding, logit")


def parse_neuronpedia(data: Any) -> ParsedGraph:
    """A Neuronpedia/circuit-tracer attribution-graph JSON object -> rows; GraphFileError if malformed."""
    if not isinstance(data, dict):
        raise GraphFileError("the file is not a JSON object with metadata, nodes and links")
    missing = [key for key in ("metadata", "nodes", "links") if not isinstance(data.get(key), dict if key == "metadata"
                                                                                 else list)]
    if missing:
        raise GraphFileError(f"the file has no {' or '.join(missing)} (Neuronpedia's graph JSON has metadata, "
                             "qParams, nodes and links)")
    metadata, nodes, links = data["metadata"], data["nodes"], data["links"]
    prompt, prompt_tokens = metadata.get("prompt"), metadata.get("prompt_tokens")
    if not isinstance(prompt, str) or not prompt:
        raise GraphFileError("metadata.prompt is missing")
    if (not isinstance(prompt_tokens, list) or not prompt_tokens or len(prompt_tokens) > MAX_PROMPT_TOKENS
            or not all(isinstance(t, str) for t in prompt_tokens)):
        raise GraphFileError(f"metadata.prompt_tokens must be a list of 1 to {MAX_PROMPT_TOKENS} strings")
    if not nodes or len(nodes) > MAX_IMPORT_NODES:
        raise GraphFileError(f"the file has {len(nodes)} nodes; a graph has 1 to {MAX_IMPORT_NODES}")
    if len(links) > MAX_IMPORT_LINKS:
        raise GraphFileError(f"the file has {len(links)} links; at most {MAX_IMPORT_LINKS} are read")
    extension = metadata.get(EXTENSION) if isinstance(metadata.get(EXTENSION), dict) else {}
    rows: list[list[Any]] = []
    labels: dict[str, str] = {}
    position: dict[str, int] = {}
    target: list[tuple[bool, int, list[Any], str]] = []
    for k, node in enumerate(nodes):
        row, clerp = _node_row(node, k, len(prompt_tokens))
        if node["node_id"] in position:
            raise GraphFileError(f"node_id {node['node_id'][:60]!r} appears twice")
        position[node["node_id"]] = k
        rows.append(row)
        if clerp and row[0] == "unit":
            labels[str(k)] = clerp[:500]
        if row[0] == "logit":
            target.append((not bool(node.get("is_target_logit")), len(target), row, clerp))
    if not target:
        raise GraphFileError("the file has no logit node: a graph explains a target logit")
    edges = []
    for k, link in enumerate(links):
        if not isinstance(link, dict):
            raise GraphFileError(f"links[{k}] is not an object")
        source, goal = position.get(str(link.get("source"))), position.get(str(link.get("target")))
        if source is None or goal is None:
            raise GraphFileError(f"links[{k}] joins {str(link.get('source'))[:60]!r} and "
                                 f"{str(link.get('target'))[:60]!r}, not two nodes of the file")
        edges.append([source, goal, _number(link.get("weight"), f"links[{k}].weight")])
    edges.sort(key=lambda edge: -abs(edge[2]))
    ids = extension.get("token_ids")
    if not (isinstance(ids, list) and len(ids) == len(prompt_tokens) and all(isinstance(t, int) for t in ids)):
        ids = [-1] * len(prompt_tokens)
        for row in rows:
            if row[0] == "token":
                ids[row[2]] = row[3]
    logits = []
    for _, _, row, clerp in sorted(target, key=lambda entry: entry[:2]):
        match = _OUTPUT.match(clerp)
        logits.append([row[3], match.group(1) if match else str(row[3]), row[5], row[4]])
    return ParsedGraph(prompt=prompt, scan=str(metadata.get("scan") or "")[:200], slug=str(metadata.get("slug") or "")[:200],
                       tokens=[[t, text] for t, text in zip(ids, prompt_tokens, strict=True)], logits=logits,
                       nodes=rows, edges=edges, labels=labels, supernodes=_supernodes(data, position),
                       extension=extension,
                       node_threshold=metadata.get("node_threshold") if isinstance(metadata.get("node_threshold"),
                                                                                   int | float) else None)


def _supernodes(data: dict[str, Any], position: dict[str, int]) -> list[tuple[str, list[int]]]:
    """``qParams.supernodes`` ([name, node_id, ...] each) as (name, node positions); unknown ids dropped."""
    q = data.get("qParams")
    groups = q.get("supernodes") if isinstance(q, dict) else None
    out: list[tuple[str, list[int]]] = []
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, list) and group and isinstance(group[0], str) and group[0].strip():
            members = sorted({position[m] for m in group[1:] if isinstance(m, str) and m in position})
            name = group[0].strip()[:200]
            if len(members) >= 2 and name not in {seen for seen, _ in out}:
                out.append((name, members))
    return out


def graph_file_data(upload: Any) -> Any:
    """The JSON of an uploaded graph file (Django's UploadedFile), refused over MAX_IMPORT_BYTES."""
    import json

    from django.core.exceptions import ValidationError

    if upload.size is not None and upload.size > MAX_IMPORT_BYTES:
        raise ValidationError(f"the file is {upload.size / 2**20:.1f} MiB; a graph file may be at most "
                              f"{MAX_IMPORT_BYTES // 2**20} MiB")
    try:
        return json.loads(upload.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"the file is not JSON: {exc}") from None
