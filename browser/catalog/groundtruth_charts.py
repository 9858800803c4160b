"""Charts for the ground-truth panels: stacked shares per row (the diagnosis per layer) and lines on
linear axes (the compression curve), server-rendered SVG with titles and a legend, readable without
colour (each part carries its share as text where it is wide enough)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.charts import _svg, axes
from browser.catalog.line_charts import SERIES_MARKS, _mark

# One fill per part; the share is also printed in the part, so colour is not the only cue.
FONT = 11
FILLS = ("#0969da", "#8c959f", "#bf8700", "#1a7f37", "#cf222e", "#8250df")


def stacked_shares_svg(rows: Sequence[tuple[str, dict[str, int]]], parts: Sequence[str], label: str, *,
                       width: int = 560, row_h: int = 18, highlight: str | None = None) -> SafeString:
    """One horizontal bar per row (its name on the left), split into ``parts`` by count; the
    highlighted row's name is drawn bold."""
    if not rows:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    left, legend_h = 70, 18
    plot_w = width - left - 10
    body = []
    for i, (name, counts) in enumerate(rows):
        y = legend_h + i * (row_h + 4)
        total = sum(counts.get(p, 0) for p in parts) or 1
        weight = ' font-weight="bold"' if name == highlight else ""
        body.append(f'<text x="{left - 6}" y="{y + row_h - 5}" text-anchor="end"{weight}>{escape(name)}</text>')
        x = float(left)
        for j, part in enumerate(parts):
            n = counts.get(part, 0)
            w = n / total * plot_w
            if n:
                body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h}" fill="{FILLS[j % len(FILLS)]}">'
                            f'<title>{escape(name)}: {escape(part)} {n} of {total} ({n / total:.0%})</title></rect>')
                if w > 34:
                    body.append(f'<text x="{x + w / 2:.1f}" y="{y + row_h - 5}" text-anchor="middle" fill="#fff">'
                                f'{n / total:.0%}</text>')
            x += w
    lx = float(left)
    for j, part in enumerate(parts):
        body.append(f'<rect x="{lx:.0f}" y="2" width="10" height="10" fill="{FILLS[j % len(FILLS)]}"/>'
                    f'<text x="{lx + 14:.0f}" y="11">{escape(part)}</text>')
        lx += 22 + 6.5 * len(part)
    height = legend_h + len(rows) * (row_h + 4) + 4
    return _svg(width, height, label, f'<g font-size="{FONT}">{"".join(body)}</g>', "stacked")


def linear_lines_svg(series: dict[str, list[tuple[float, float]]], label: str, *, x_label: str, y_label: str,
                     width: int = 480, height: int = 220, bands: dict[str, list[tuple[float, float, float]]] | None = None,
                     ) -> SafeString:
    """Named lines of (x, y) points on linear axes, each with its own point shape; ``bands`` gives a
    series (x, low, high) drawn as a shaded band (e.g. the spread over seeds)."""
    points = [p for pts in series.values() for p in pts if math.isfinite(p[1])]
    if not points:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    band_ys = [v for b in (bands or {}).values() for _, lo, hi in b for v in (lo, hi)]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    x1 = x1 if x1 > x0 else x0 + 1
    y0 = min(0.0, *(p[1] for p in points), *band_ys)
    y1 = max(*(p[1] for p in points), *band_ys, y0 + 1e-9)
    left, bottom, plot_w, plot_h = 44, 30, width - 190, height - 40

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return 10 + (1 - (y - y0) / (y1 - y0)) * plot_h

    body = axes(left=left, plot_w=plot_w, height=height, y0_px=sy(y0), y1_px=sy(y1), y0=y0, y1=y1,
                x_label=x_label, y_label=y_label)
    last = -math.inf
    for x in sorted({p[0] for p in points}):
        if sx(x) - last >= 28:  # close ticks (-0.111 and -0.053 next to 0) would overprint
            body.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 12}" text-anchor="middle">{x:.3g}</text>')
            last = sx(x)
    for name, band in (bands or {}).items():
        band = sorted(band)
        outline = [f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band] + [f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band)]
        body.append(f'<polygon points="{" ".join(outline)}" fill="currentColor" fill-opacity="0.12">'
                    f'<title>{escape(name)}: spread over seeds</title></polygon>')
    for i, (name, pts) in enumerate(series.items()):
        shape = SERIES_MARKS[i % len(SERIES_MARKS)]
        good = sorted(p for p in pts if math.isfinite(p[1]))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        body.append(f'<polyline fill="none" stroke="currentColor" points="{path}"/>')
        body.extend(_mark(shape, sx(x), sy(y), f"{name}: {y_label} {y:.3f} at {x_label} {x:.3g}") for x, y in good)
        ly = 14 + i * 14
        body.append(_mark(shape, left + plot_w + 16, ly - 4, name) + f'<text x="{left + plot_w + 24}" y="{ly}">{escape(name)}</text>')
    return _svg(width, height, label, f'<g font-size="{FONT}">{"".join(body)}</g>', "lines")


def intervals_svg(points: Sequence[tuple[str, float, float, float]], band: tuple[float, float, float] | None,
                  label: str, *, y_label: str, width: int = 560, height: int = 200) -> SafeString:
    """One column per (name, value, low, high), sorted as given: a dot at the value and a bar from
    low to high; ``band`` (low, mean, high) is shaded across the whole plot (e.g. random units)."""
    if not points:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    ys = [v for _, value, lo, hi in points for v in (value, lo, hi)] + (list(band) if band else [])
    y0, y1 = min(0.0, *ys), max(*ys, 1e-9)
    left, plot_w, plot_h = 44, width - 54, height - 30
    step = plot_w / len(points)

    def sy(y: float) -> float:
        return 10 + (1 - (y - y0) / (y1 - y0)) * plot_h

    body = axes(left=left, plot_w=plot_w, height=height, y0_px=sy(y0), y1_px=sy(y1), y0=y0, y1=y1,
                x_label="units, by score", y_label=y_label)
    if band:
        lo, mean, hi = band
        body.append(f'<rect x="{left}" y="{sy(hi):.1f}" width="{plot_w}" height="{max(sy(lo) - sy(hi), 1):.1f}" '
                    f'fill="currentColor" fill-opacity="0.12"><title>random units: 5-95% {lo:.3f}-{hi:.3f}</title></rect>'
                    f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(mean):.1f}" y2="{sy(mean):.1f}" stroke="currentColor" '
                    f'stroke-dasharray="4 3"><title>random units: mean {mean:.3f}</title></line>')
    for i, (name, value, lo, hi) in enumerate(points):
        x = left + (i + 0.5) * step
        tip = escape(f"{name}: {value:.3f} (resampled 5-95%: {lo:.3f}-{hi:.3f})")
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(hi):.1f}" y2="{sy(lo):.1f}" stroke="currentColor">'
                    f'<title>{tip}</title></line><circle cx="{x:.1f}" cy="{sy(value):.1f}" r="2.5"><title>{tip}</title></circle>')
    return _svg(width, height, label, f'<g font-size="{FONT}">{"".join(body)}</g>', "intervals")
