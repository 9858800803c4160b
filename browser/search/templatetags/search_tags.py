"""``{% source_overview %}`` on the source page (a link to the map, the family tree) and ``{% unit_family_panel unit %}``
on the unit page."""

from __future__ import annotations

from typing import Any

from django import template

from browser.catalog.models import Source, Unit
from browser.search.families import source_tree, unit_family
from browser.search.overview_selectors import source_map_row

register = template.Library()


@register.inclusion_tag("search/_source_overview.html", takes_context=True)
def source_overview(context: dict[str, Any]) -> dict[str, Any]:
    """A link to the map when one exists for the source's current state, and the family tree."""
    source: Source = context["source"]
    tree, tree_total = source_tree(source)
    return {"source": source, "map": source_map_row(source), "tree": tree, "tree_total": tree_total}


@register.inclusion_tag("search/_unit_family.html")
def unit_family_panel(unit: Unit) -> dict[str, Any]:
    return {"family": unit_family(unit)}
