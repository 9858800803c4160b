"""``{% groundtruth_panels %}`` on the source page: the ground-truth panels of the source's model
(diagnosis per layer, the cluster score's spread, the hook's SAEs side by side), and ``{% compression_curve model %}`` on the toy page; see
browser/catalog/groundtruth_selectors.py."""

from __future__ import annotations

from typing import Any

from django import template

from browser.catalog.groundtruth_selectors import (
    CORE_COLUMNS,
    cluster_spread_panel,
    compression_panel,
    layer_diagnoses,
    sae_core_panel,
)
from browser.catalog.models import Model, Source

register = template.Library()


@register.inclusion_tag("catalog/_groundtruth.html", takes_context=True)
def groundtruth_panels(context: dict[str, Any]) -> dict[str, Any]:
    source: Source = context["source"]
    return {"source": source, "diagnosis": layer_diagnoses(source), "spread": cluster_spread_panel(source),
            "core": sae_core_panel(source), "core_columns": [name for _, name in CORE_COLUMNS]}


@register.inclusion_tag("catalog/_compression.html")
def compression_curve(model: Model) -> dict[str, Any]:
    return {"c": compression_panel(model)}
