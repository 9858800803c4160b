"""The source map page (its own page: drawing a map reads a value of every unit, which the source
page, also the source's unit list, must not pay on each view)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from browser.catalog.selectors import score_names, source_get
from browser.search.map_svg import map_svg
from browser.search.overview_selectors import source_map_current


def source_map_page(request: HttpRequest, model: str, source: str) -> HttpResponse:
    src = source_get(model_name=model, source_name=source)
    names = score_names()
    color_by = request.GET.get("map_color", "density")
    if color_by not in ("density", "labelled", *(f"score:{n}" for n in names)):
        color_by = "density"
    row, coords = source_map_current(src)
    svg, legend = map_svg(src, coords, color_by) if coords is not None else (None, None)
    return render(request, "search/source_map.html", {
        "source": src, "map": row, "svg": svg, "legend": legend, "score_names": names, "color_by": color_by})
