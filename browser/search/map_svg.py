"""The source map drawn as server-side SVG: one point per unit (a link to its page, its label in a
tooltip), coloured by density, a score, or labelled / unlabelled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Score, Source, Unit
from browser.catalog.selectors import score_version
from browser.labels.models import Label

MAX_POINTS = 20_000  # more points than this are thinned evenly (an SVG of 20k circles is ~2 MB)
SIZE = 560
PAD = 8
# Five stops of viridis: low values dark blue, high values yellow.
STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)


@dataclass(frozen=True)
class MapLegend:
    color_by: str
    low: float | None
    high: float | None


def colour(t: float) -> str:
    """Viridis-like colour of t in [0, 1] (NaN: grey)."""
    if not np.isfinite(t):
        return "#bbb"
    x = min(max(t, 0.0), 1.0) * (len(STOPS) - 1)
    i = min(int(x), len(STOPS) - 2)
    r, g, b = STOPS[i] + (STOPS[i + 1] - STOPS[i]) * (x - i)
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def _values(source: Source, color_by: str) -> dict[int, float]:
    units = Unit.objects.filter(source=source)
    if color_by == "labelled":
        return {i: float(n > 0) for i, n in units.values_list("index", "label_count")}
    if color_by.startswith("score:"):
        name = color_by[6:]
        rows = Score.objects.filter(unit__source=source, name=name, version=score_version(name), label__isnull=True)
        return dict(rows.values_list("unit__index", "value"))
    # Density on a log scale: densities span orders of magnitude.
    return {i: float(np.log10(d)) for i, d in units.values_list("index", "density") if d and d > 0}


def _labels(source: Source) -> dict[int, str]:
    out: dict[int, str] = {}
    for index, text in Label.objects.filter(unit__source=source).order_by("-updated").values_list("unit__index", "text"):
        out.setdefault(index, text)
    return out


def map_svg(source: Source, coords: np.ndarray, color_by: str) -> tuple[SafeString, MapLegend]:
    values = _values(source, color_by)
    labels = _labels(source)
    finite = [v for v in values.values() if np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (None, None)
    span = (high - low) if finite and high != low else 1.0  # type: ignore[operator]
    lo_xy, hi_xy = coords.min(0), coords.max(0)
    scale = (SIZE - 2 * PAD) / np.maximum(hi_xy - lo_xy, 1e-9)
    xy = (coords - lo_xy) * scale + PAD
    shown: list[int] = np.linspace(0, len(coords) - 1, min(len(coords), MAX_POINTS)).astype(int).tolist()
    base = reverse("unit", args=[source.model.name, source.name, 0])[:-2]  # ".../0/" -> ".../"
    parts = [f'<svg class="source-map" viewBox="0 0 {SIZE} {SIZE}" width="{SIZE}" height="{SIZE}" role="img" '
             f'aria-label="map of {len(coords)} units of {escape(str(source))}">']
    for i in shown:
        v = values.get(int(i), float("nan"))
        t = (v - low) / span if low is not None and np.isfinite(v) else float("nan")
        tip = f"#{i}" + (f": {labels[int(i)]}" if int(i) in labels else "")
        parts.append(f'<a href="{base}{i}/"><circle cx="{xy[i, 0]:.1f}" cy="{xy[i, 1]:.1f}" r="3" '
                     f'fill="{colour(t)}" data-unit="{i}"><title>{escape(tip)}</title></circle></a>')
    parts.append("</svg>")
    return mark_safe("".join(parts)), MapLegend(color_by, low, high)
