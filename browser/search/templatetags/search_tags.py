"""``{% source_overview %}`` on the source page (map and family tree) and ``{% unit_family_panel unit %}``
on the unit page."""

from __future__ import annotations

from typing import Any

from django import template

from browser.catalog.models import Source, Unit
from browser.catalog.selectors import score_names
from browser.search.families import source_tree, unit_family
from browser.search.map_svg import map_svg
from browser.search.overviews import source_map_current

register = template.Library()


@register.inclusion_tag("search/_source_overview.html", takes_context=True)
def source_overview(context: dict[str, Any]) -> dict[str, Any]:
    source: Source = context["source"]
    request = context.get("request")
    color_by = request.GET.get("map_color", "density") if request is not None else "density"
    names = score_names()
    if color_by not in ("density", "labelled", *(f"score:{n}" for n in names)):
        color_by = "density"
    row, coords = source_map_current(source)
    svg, legend = map_svg(source, coords, color_by) if coords is not None else (None, None)
    tree, tree_total = source_tree(source)
    return {"source": source, "map": row, "svg": svg, "legend": legend, "score_names": names,
            "color_by": color_by, "tree": tree, "tree_total": tree_total}


@register.inclusion_tag("search/_unit_family.html")
def unit_family_panel(unit: Unit) -> dict[str, Any]:
    return {"family": unit_family(unit)}
