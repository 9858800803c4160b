from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe

from browser.graphs.selectors import graph_detail, graph_get, graph_list
from browser.graphs.svg import MAX_EDGES_DRAWN, graph_svg


def graph_view(request: HttpRequest, pk: int) -> HttpResponse:
    graph = graph_get(pk=pk)
    detail = graph_detail(graph)
    svg = graph_svg(detail) if detail["status"] == "done" else ""
    return render(request, "graphs/graph.html", {"d": detail, "svg": mark_safe(svg),  # noqa: S308  # escaped in svg.py
                                                 "max_edges": MAX_EDGES_DRAWN})


def graph_list_view(request: HttpRequest) -> HttpResponse:
    return render(request, "graphs/graphs.html", {"graphs": graph_list(model=request.GET.get("model") or None)})
