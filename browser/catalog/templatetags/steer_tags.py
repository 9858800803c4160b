"""``{% steer_panel %}``: the unit page's steering form (``catalog/_steer.html``)."""

from __future__ import annotations

from typing import Any

from django import template

from browser.catalog.steer import MAX_N_TOKENS
from workers.compute.ops import OPS

register = template.Library()


@register.inclusion_tag("catalog/_steer.html", takes_context=True)
def steer_panel(context: template.Context) -> dict[str, Any]:
    unit = context["unit"]
    # The default strength: the unit's largest harvested activation, a push of its own size.
    strength = round(unit.max_activation, 2) if unit.max_activation else 8
    return {"unit": unit, "d": context["d"], "user": context["user"], "ops": OPS, "max_n": MAX_N_TOKENS,
            "steer_default": strength}
