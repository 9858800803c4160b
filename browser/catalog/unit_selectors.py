"""Reads of one unit for its page and JSON twin: scores with what each measures, related units,
its neighbours in the source, and an SAE source's quality summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Sae, Score, Source, Unit, UnitRelation

SCORE_HELP = {
    "density": "fraction of tokens where the unit fires above zero",
    "top_token_concentration": "share of top examples whose max token is the same string (1 = one token)",
    "context_cluster_polysemanticity": ("1 - cosine of the two 2-means centres of its example windows' MiniLM "
                                        "embeddings, less the corpus's mean window, weighted by activation "
                                        "(high = several meanings; compare units on one corpus)"),
    "features_per_neuron": ("effective number of SAE features that each carry at least 1% of the neuron on its "
                            "interval and random examples (0: none does; interval and share explained in details)"),
    "neurons_per_feature": "effective number of neurons the feature's decoder direction is spread over",
    "toy_true_features": "ground truth: effective number of features the toy model stores in this neuron",
    "label_auc": "how well a label's embedding ranks the unit's firing contexts above silent ones (0.5 = chance)",
    "feature_dimensionality": "toy model: the paper's D_i, the share of a dimension the feature gets",
    "intervention_kl": ("mean KL (nats) of the next-token prediction after its max token when the unit is "
                        "zero-ablated, over its top and interval examples (high = it changes what the model says)"),
    "intervention_logit_drop": ("mean drop in log of the summed probability of the 5 tokens its logit effects push "
                                "up most when it is zero-ablated, on its own examples (positive = the direct effect "
                                "is real)"),
}
RELATION_HELP = {
    UnitRelation.Kind.DECODER_COSINE: "cosine of the decoder directions",
    UnitRelation.Kind.ALIGNMENT: "share of the feature's decoder L1 on the neuron",
    UnitRelation.Kind.CORRELATION: "Pearson correlation of activations over the corpus",
    UnitRelation.Kind.CONTEXT_OVERLAP: "share of top contexts in common",
}


# ---- one unit: scores and relations ------------------------------------------------------------
@dataclass(frozen=True)
class ScoreView:
    name: str
    version: int
    value: float
    help: str
    details: dict[str, Any]


def unit_scores(unit: Unit) -> list[ScoreView]:
    rows = Score.objects.filter(unit=unit, label__isnull=True).order_by("name", "-version")
    latest: dict[str, Score] = {}
    for s in rows:
        latest.setdefault(s.name, s)
    return [ScoreView(s.name, s.version, s.value, SCORE_HELP.get(s.name, ""), s.details) for s in latest.values()]


@dataclass(frozen=True)
class RelationGroup:
    kind: str
    title: str
    help: str
    rows: list[UnitRelation]


def unit_relations(unit: Unit, *, kinds: Sequence[str] = (), per_kind: int = 10) -> list[RelationGroup]:
    qs = (UnitRelation.objects.filter(unit=unit, rank__lt=per_kind)
          .select_related("other", "other__source", "other__source__model", "other__source__model__tokenizer")
          .defer("other__search", "other__source__model__tokenizer__tokens").order_by("kind", "rank"))
    if kinds:
        qs = qs.filter(kind__in=kinds)
    groups: dict[str, list[UnitRelation]] = {}
    for rel in qs:
        groups.setdefault(rel.kind, []).append(rel)
    return [RelationGroup(k, UnitRelation.Kind(k).label, RELATION_HELP[UnitRelation.Kind(k)], rows)
            for k, rows in groups.items()]


def unit_neighbours(unit: Unit) -> tuple[int | None, int | None]:
    """The previous and next index in the unit's source (n/p on the keyboard)."""
    prev = unit.index - 1 if unit.index > 0 else None
    nxt = unit.index + 1 if unit.index + 1 < unit.source.n_units else None
    return prev, nxt


QUALITY_HELP = {
    "fvu": "fraction of variance unexplained on held-out tokens (0 = perfect reconstruction)",
    "l0": "mean number of active latents per token",
    "dead_fraction": "share of latents that never fired on the held-out tokens",
    "loss_clean": "next-token loss of the model",
    "loss_spliced": "next-token loss with the SAE's reconstruction spliced in",
    "loss_zero": "next-token loss with the activation zeroed",
    "loss_recovered": "(zero - spliced) / (zero - clean): 1 = the SAE loses nothing",
}


@dataclass(frozen=True)
class SaeSummary:
    architecture: str
    d_in: int
    d_sae: int
    quality: list[tuple[str, float, str]]
    superposition: dict[str, Any] | None
    curve: SafeString | None


def sae_summary(source: Source) -> SaeSummary | None:
    """What the source page says of an SAE: its shape, quality on held-out tokens, the layer's
    superposition (from the score job) and its training loss curve."""
    sae = Sae.objects.filter(source=source).defer("cfg").first()
    if sae is None:
        return None
    quality = [(k, float(v), QUALITY_HELP.get(k, "")) for k, v in sae.quality.items() if isinstance(v, int | float)]
    return SaeSummary(sae.get_architecture_display(), sae.d_in, sae.d_sae, quality,
                      sae.quality.get("superposition"), _curve_svg(sae.loss_curve))


def _curve_svg(curve: list[Any], width: int = 320, height: int = 70) -> SafeString | None:
    """The loss curve as a small line (points are {"step", "loss", ...} as training records them)."""
    points = [(float(p["step"]), float(p["loss"])) for p in curve if isinstance(p, dict) and "loss" in p]
    if len(points) < 2:
        return None
    x0, x1 = points[0][0], points[-1][0] or 1.0
    lo, hi = min(p[1] for p in points), max(p[1] for p in points)
    span = (hi - lo) or 1.0
    path = " ".join(f"{(x - x0) / ((x1 - x0) or 1) * width:.1f},{height - (y - lo) / span * height:.1f}"
                    for x, y in points)
    label = f"training loss from {points[0][1]:.4g} to {points[-1][1]:.4g} over {len(points)} points"
    return mark_safe(f'<svg class="curve" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                     f'role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>'
                     f'<polyline fill="none" stroke="currentColor" points="{path}"/></svg>')
