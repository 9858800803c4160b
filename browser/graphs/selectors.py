"""Reads of attribution graphs: one graph with what the browser knows of each node's unit (label,
top token), the same dict for the page and its JSON twin."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404

from browser.catalog.models import Unit
from browser.graphs.models import Graph, Supernode, SupernodeRevision
from browser.labels.models import Label

NODE_KEYS = ("kind", "layer", "position", "index", "value", "influence")


def graph_get(*, pk: int) -> Graph:
    graph = Graph.objects.select_related("model", "job").filter(pk=pk).first()
    if graph is None:
        raise Http404(f"no graph #{pk}")
    return graph


def graph_list(*, model: str | None = None, limit: int = 50) -> QuerySet[Graph]:
    graphs = Graph.objects.select_related("model").order_by("-created")
    return (graphs.filter(model__name=model) if model else graphs)[:limit]


def graph_siblings(graph: Graph) -> QuerySet[Graph]:
    """Other graphs of the same model and prompt (another basis or settings), newest first."""
    return (Graph.objects.filter(model=graph.model, prompt=graph.prompt).exclude(pk=graph.pk)
            .order_by("-created")[:20])


def neuron_source(layer: int) -> str:
    """The neuron source's name (its hook point) of a layer: unit pages live under it."""
    return f"blocks.{layer}.mlp.hook_post"


def unit_source(graph: Graph, layer: int) -> str:
    """The source of a unit node: the layer's SAE in an SAE-basis graph, else its neurons."""
    saes = {int(entry[0]): str(entry[1]) for entry in graph.config.get("saes", [])}
    return saes.get(layer, neuron_source(layer))


def foreign_units(graph: Graph) -> bool:
    """Whether the graph's unit nodes are not this browser's units (an imported graph of features
    from elsewhere, say a Neuronpedia transcoder): they show the file's labels and link nowhere."""
    return graph.basis == "imported"


def _units(graph: Graph, nodes: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(source, index) -> {label, top_token} for the graph's unit nodes the browser has."""
    if foreign_units(graph):
        return {}
    wanted = {(unit_source(graph, n["layer"]), n["index"]) for n in nodes if n["kind"] == "unit"}
    found: dict[tuple[str, int], dict[str, Any]] = {}
    sources = {source for source, _ in wanted}
    units = Unit.objects.filter(source__model=graph.model, source__name__in=sources,
                                index__in={index for _, index in wanted}).select_related("source")
    for unit in units:
        key = (unit.source.name, unit.index)
        if key in wanted:
            found[key] = {"unit_id": unit.pk, "top_token": unit.top_token, "label": ""}
    by_id = {info["unit_id"]: info for info in found.values()}
    for label in Label.objects.filter(unit_id__in=by_id).order_by("machine", "-updated"):
        if not by_id[label.unit_id]["label"]:
            by_id[label.unit_id]["label"] = label.text
    return found


def graph_detail(graph: Graph) -> dict[str, Any]:
    """Everything the page and ``/api/v1/graphs/<id>/`` show."""
    nodes = [dict(zip(NODE_KEYS, row, strict=True)) for row in graph.nodes]
    known = _units(graph, nodes)
    tokens = [text for _, text in graph.tokens]
    imported = graph.config.get("imported")
    foreign = foreign_units(graph)
    for k, node in enumerate(nodes):
        node["token"] = tokens[node["position"]] if 0 <= node["position"] < len(tokens) else ""
        if node["kind"] == "unit" and foreign:
            node.update({"source": "", "unit_kind": "feature", "harvested": False,
                         "uid": f"{imported.get('scan') or graph.model.name} layer {node['layer']} #{node['index']}",
                         "label": imported.get("labels", {}).get(str(k), ""), "top_token": ""})
        elif node["kind"] == "unit":
            source = unit_source(graph, node["layer"])
            node["source"] = source
            node["unit_kind"] = "neuron" if source == neuron_source(node["layer"]) else "feature"
            node["uid"] = f"{graph.model.name}/{source}/{node['index']}"
            node.update({k: v for k, v in known.get((source, node["index"]), {}).items() if k != "unit_id"})
            node["harvested"] = (source, node["index"]) in known
    return {
        "id": graph.pk, "model": graph.model.name, "prompt": graph.prompt, "basis": graph.basis,
        "status": graph.status, "error": graph.error, "config": graph.config, "config_hash": graph.config_hash,
        "n_layers": graph.model.n_layers, "created": graph.created.isoformat(),
        "finished": graph.finished.isoformat() if graph.finished else None,
        "job": graph.job_id, "progress": _progress(graph),
        "tokens": [{"id": t, "text": text} for t, text in graph.tokens],
        "logits": [{"id": t, "text": text, "probability": p, "logit": v} for t, text, p, v in graph.logits],
        "scores": graph.scores, "nodes": nodes, "supernodes": supernode_list(graph),
        "imported": ({k: v for k, v in imported.items() if k != "labels"} if imported else None),
        "edges": [{"source": s, "target": t, "weight": w} for s, t, w in graph.edges],
    }


def _progress(graph: Graph) -> dict[str, Any] | None:
    job = graph.job
    if job is None:
        return None
    return {"status": job.status, "done": job.done, "total": job.total, "message": job.message}


def supernode_list(graph: Graph) -> list[dict[str, Any]]:
    return [{"id": s.pk, "name": s.name, "nodes": s.nodes, "author": s.author.username, "revision": s.revision,
             "updated": s.updated.isoformat()}
            for s in Supernode.objects.filter(graph=graph).select_related("author").order_by("name")]


def supernode_history(graph: Graph, *, limit: int = 100) -> list[dict[str, Any]]:
    revisions = SupernodeRevision.objects.filter(graph=graph).select_related("editor").order_by("-at", "-id")[:limit]
    return [{"name": r.name, "nodes": r.nodes, "revision": r.revision, "deleted": r.deleted,
             "editor": r.editor.username, "at": r.at.isoformat()} for r in revisions]


def graph_unit_ids(graph: Graph) -> list[int]:
    """The ids of this browser's units that are nodes of the graph (none for foreign units)."""
    if foreign_units(graph):
        return []
    wanted: dict[str, set[int]] = {}
    for kind, layer, _, index, *_ in graph.nodes:
        if kind == "unit":
            wanted.setdefault(unit_source(graph, layer), set()).add(index)
    ids: list[int] = []
    for source, indices in wanted.items():
        ids += Unit.objects.filter(source__model=graph.model, source__name=source,
                                   index__in=indices).values_list("pk", flat=True)
    return sorted(ids)
