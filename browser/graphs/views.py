from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from browser.accounts import access
from browser.api.compute import ComputeError, compute_refusal
from browser.graphs.checks import OP_NAMES, check_edit, check_nodes, check_run, check_target
from browser.graphs.neuronpedia import MAX_IMPORT_BYTES
from browser.graphs.selectors import graph_detail, graph_get, graph_list, graph_siblings
from browser.graphs.services import graph_import_upload, supernode_save
from browser.graphs.svg import MAX_EDGES_DRAWN, graph_svg


def graph_view(request: HttpRequest, pk: int) -> HttpResponse:
    graph = graph_get(pk=pk)
    detail = graph_detail(graph)
    svg = graph_svg(detail) if detail["status"] == "done" else ""
    return render(request, "graphs/graph.html", {
        "d": detail, "svg": mark_safe(svg),  # noqa: S308  # escaped in svg.py
        "max_edges": MAX_EDGES_DRAWN, "can_group": access.can_label(request.user),
        "can_compute": access.can_compute(request.user), "ops": OP_NAMES,
        "error": request.GET.get("error", "")[:300], "check_error": request.GET.get("check_error", "")[:300],
        "selected": request.GET.get("nodes", "")[:500], "siblings": graph_siblings(graph)})


def graph_compare_view(request: HttpRequest) -> HttpResponse:
    """Two graphs (say the neuron and the feature basis of one prompt) with their sizes and scores."""
    values = [request.GET.get(key, "") for key in ("a", "b")]
    if not all(value.isdigit() for value in values):
        return HttpResponse("Give two graph ids: /graphs/compare/?a=ID&b=ID", status=400)
    graphs = []
    for value in values:
        detail = graph_detail(graph_get(pk=int(value)))
        svg = graph_svg(detail) if detail["status"] == "done" else ""
        graphs.append({"d": detail, "svg": mark_safe(svg)})  # noqa: S308  # escaped in svg.py
    return render(request, "graphs/compare.html", {"graphs": graphs})


def _check_value(raw: str) -> float | None:
    try:
        return float(raw) if raw.strip() else None
    except ValueError:
        raise ValidationError(f"the value {raw[:30]!r} is not a number") from None


@require_POST
def graph_check_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The page's check form (selected nodes or a supernode; "Ablate", or "Steer" with an edit and a
    value): the page again with the predicted and real change of the chosen target logit."""
    graph = graph_get(pk=pk)
    refusal = compute_refusal(request)
    if refusal is not None:
        return HttpResponse(refusal[1], status=refusal[0])
    supernode = request.POST.get("supernode", "")
    raw_nodes = [n for n in request.POST.get("nodes", "").replace(" ", "").split(",") if n]
    op = request.POST.get("op", "zero")
    op = request.POST.get("edit", "scale") if op == "edit" else op
    try:
        nodes = check_nodes(graph=graph, supernode=supernode,
                            nodes=None if supernode else [int(n) if n.isdigit() else n for n in raw_nodes])
        value = check_edit(op=op, value=_check_value(request.POST.get("value", "")))
        target = check_target(graph=graph, target=request.POST.get("target") or None)
        result = check_run(graph=graph, nodes=nodes, op=op, value=value, target=target)
    except (ValidationError, ComputeError) as exc:
        message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
        return redirect(f"/graphs/{pk}/?" + urlencode({"check_error": message[:300], "nodes": ",".join(raw_nodes)}))
    detail = graph_detail(graph)
    check: dict[str, object] = {"supernode": supernode, "op_name": OP_NAMES[op], **result,
                                "gap": round(result["real"] - result["predicted"], 5),
                                "rows": [{"node": n, "term": term, **_described(detail["nodes"][n])}
                                         for n, term in zip(result["nodes"], result["terms"], strict=True)]}
    return render(request, "graphs/graph.html", {
        "d": detail, "svg": mark_safe(graph_svg(detail)),  # noqa: S308  # escaped in svg.py
        "max_edges": MAX_EDGES_DRAWN, "can_group": access.can_label(request.user), "check": check,
        "can_compute": True, "selected": ", ".join(str(n) for n in result["nodes"]), "siblings": graph_siblings(graph),
        "ops": OP_NAMES})


def _described(node: dict[str, Any]) -> dict[str, Any]:
    return {"uid": node.get("uid", ""), "label": node.get("label", ""), "token": node.get("token", ""),
            "value": node.get("value")}


@require_POST
def graph_supernode_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The page's form: group the pinned nodes under a name (annotators)."""
    graph = graph_get(pk=pk)
    nodes = [int(n) for n in request.POST.get("nodes", "").replace(" ", "").split(",") if n.lstrip("-").isdigit()]
    try:
        supernode_save(graph=graph, user=request.user, name=request.POST.get("name", ""), nodes=nodes)
    except PermissionDenied:
        return HttpResponse("Grouping nodes needs the annotator role.", status=403)
    except ValidationError as exc:
        return redirect(f"/graphs/{pk}/?" + urlencode({"error": exc.messages[0][:200]}))
    return redirect(f"/graphs/{pk}/")


def graph_list_view(request: HttpRequest) -> HttpResponse:
    return render(request, "graphs/graphs.html", {
        "graphs": graph_list(model=request.GET.get("model") or None), "can_import": access.can_compute(request.user),
        "max_mib": MAX_IMPORT_BYTES // 2**20, "error": request.GET.get("error", "")[:300]})


@require_POST
def graph_import_view(request: HttpRequest) -> HttpResponse:
    """The list page's upload form: a Neuronpedia graph JSON file opens as a graph (signed-in users)."""
    refusal = compute_refusal(request)
    if refusal is not None:
        return HttpResponse(refusal[1], status=refusal[0])
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise ValidationError("choose a graph JSON file")
        graph, _, _ = graph_import_upload(upload, model_name=request.POST.get("model") or None, user=request.user)
    except ValidationError as exc:
        return redirect("/graphs/?" + urlencode({"error": exc.messages[0][:300]}))
    return redirect(f"/graphs/{graph.pk}/")
