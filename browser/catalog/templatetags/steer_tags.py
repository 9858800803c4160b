"""``{% steer_panel %}``: the unit page's steering form (``catalog/_steer.html``)."""

from __future__ import annotations

from typing import Any

from django import template

from browser.catalog.models import Score
from browser.catalog.steer import MAX_N_TOKENS
from browser.examples.selectors import vocab_for
from workers.compute.ops import OPS

register = template.Library()


@register.inclusion_tag("catalog/_steer.html", takes_context=True)
def steer_panel(context: template.Context) -> dict[str, Any]:
    unit = context["unit"]
    # The default strength: the unit's largest harvested activation, a push of its own size.
    strength = round(unit.max_activation, 2) if unit.max_activation else 8
    return {"unit": unit, "d": context["d"], "user": context["user"], "ops": OPS, "max_n": MAX_N_TOKENS,
            "steer_default": strength}


@register.inclusion_tag("catalog/_ablation.html", takes_context=True)
def ablation_lowered(context: template.Context) -> dict[str, Any]:
    """The tokens the unit's ablation lowers most (its ``intervention_kl`` score's details), each marked
    when its direct-path logit effects push it up too."""
    unit = context["unit"]
    score = next((s for s in context["d"].scores if s.name == "intervention_kl"), None)
    lowered = (score.details.get("lowered") if score is not None else None) or []
    vocab = vocab_for(unit.source.model)
    direct = {int(t) for t, _ in (unit.logit_effects or {}).get("up", [])}
    matches = Score.objects.filter(unit=unit, name="label_output_match", label__isnull=False).select_related(
        "label").order_by("label_id")
    return {"lowered": [(vocab.token(int(t)), v, int(t) in direct) for t, v in lowered],
            "contexts": score.details.get("contexts", 0) if score is not None else 0,
            "matches": [(m.label.text, m.value, m.details) for m in matches if m.label is not None]}
