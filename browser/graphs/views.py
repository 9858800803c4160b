from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from browser.accounts import access
from browser.api.compute import ComputeError, compute_refusal
from browser.graphs.checks import check_nodes, check_run
from browser.graphs.selectors import graph_detail, graph_get, graph_list, graph_siblings
from browser.graphs.services import supernode_save
from browser.graphs.svg import MAX_EDGES_DRAWN, graph_svg


def graph_view(request: HttpRequest, pk: int) -> HttpResponse:
    graph = graph_get(pk=pk)
    detail = graph_detail(graph)
    svg = graph_svg(detail) if detail["status"] == "done" else ""
    return render(request, "graphs/graph.html", {
        "d": detail, "svg": mark_safe(svg),  # noqa: S308  # escaped in svg.py
        "max_edges": MAX_EDGES_DRAWN, "can_group": access.can_label(request.user),
        "error": request.GET.get("error", "")[:300], "siblings": graph_siblings(graph)})


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


@require_POST
def graph_check_view(request: HttpRequest, pk: int) -> HttpResponse:
    """A supernode's "ablate" button: the page again with the predicted and real change."""
    graph = graph_get(pk=pk)
    refusal = compute_refusal(request)
    if refusal is not None:
        return HttpResponse(refusal[1], status=refusal[0])
    try:
        nodes = check_nodes(graph=graph, supernode=request.POST.get("supernode", ""))
        check: dict[str, object] = {"supernode": request.POST.get("supernode", ""), **check_run(graph=graph, nodes=nodes)}
    except (ValidationError, ComputeError) as exc:
        message = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
        return redirect(f"/graphs/{pk}/?" + urlencode({"error": message[:200]}))
    detail = graph_detail(graph)
    return render(request, "graphs/graph.html", {
        "d": detail, "svg": mark_safe(graph_svg(detail)),  # noqa: S308  # escaped in svg.py
        "max_edges": MAX_EDGES_DRAWN, "can_group": access.can_label(request.user), "check": check})


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
    return render(request, "graphs/graphs.html", {"graphs": graph_list(model=request.GET.get("model") or None)})
