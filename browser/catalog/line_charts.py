"""Line charts as server-rendered SVG (no script, no CDN): several named series, each with its own
point shape so they read without colour (titles and aria labels as in ``charts.py``)."""

from __future__ import annotations

import numpy as np
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.charts import _svg, axes

SERIES_MARKS = ("circle", "rect", "diamond", "triangle", "cross")


def _mark(shape: str, x: float, y: float, tip: str) -> str:
    title = f"<title>{escape(tip)}</title>"
    if shape == "rect":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6">{title}</rect>'
    if shape == "diamond":
        return f'<polygon points="{x:.1f},{y - 4:.1f} {x + 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} {x - 4:.1f},{y:.1f}">{title}</polygon>'
    if shape == "triangle":
        return f'<polygon points="{x:.1f},{y - 4:.1f} {x + 4:.1f},{y + 3:.1f} {x - 4:.1f},{y + 3:.1f}">{title}</polygon>'
    if shape == "cross":
        return (f'<path d="M{x - 3:.1f},{y - 3:.1f}L{x + 3:.1f},{y + 3:.1f}M{x - 3:.1f},{y + 3:.1f}L{x + 3:.1f},'
                f'{y - 3:.1f}" stroke="currentColor">{title}</path>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3">{title}</circle>'


def lines_svg(series: dict[str, list[tuple[float, float]]], label: str, *, x_label: str, y_label: str,
              marker_x: float | None = None, width: int = 480, height: int = 200) -> SafeString:
    """Several named lines of (x, y) points on a log2 x axis, each with its own point shape (readable
    without colour); ``marker_x`` draws a dashed vertical line (e.g. the true L0)."""
    points = [p for pts in series.values() for p in pts if p[0] > 0 and np.isfinite(p[1])]
    if not points:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    xs = [np.log2(p[0]) for p in points] + ([np.log2(marker_x)] if marker_x else [])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(p[1] for p in points)), max(1.0, max(p[1] for p in points))
    left, bottom, plot_w, plot_h = 40, 30, width - 170, height - 40

    def sx(x: float) -> float:
        return left + (np.log2(x) - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return 10 + (1 - (y - y0) / (y1 - y0)) * plot_h

    body = axes(left=left, plot_w=plot_w, height=height, y0_px=sy(y0), y1_px=sy(y1), y0=y0, y1=y1,
                x_label=x_label, y_label=y_label)
    for x in sorted({p[0] for p in points}):
        body.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 12}" text-anchor="middle">{x:.3g}</text>')
    if marker_x:
        body.append(f'<line x1="{sx(marker_x):.1f}" x2="{sx(marker_x):.1f}" y1="10" y2="{10 + plot_h}" '
                    f'stroke="currentColor" stroke-dasharray="4 3"><title>true L0 {marker_x:.3g}</title></line>')
    for i, (name, pts) in enumerate(series.items()):
        shape = SERIES_MARKS[i % len(SERIES_MARKS)]
        good = sorted(p for p in pts if p[0] > 0 and np.isfinite(p[1]))
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        body.append(f'<polyline fill="none" stroke="currentColor" points="{path}"/>')
        body.extend(_mark(shape, sx(x), sy(y), f"{name}: {y_label} {y:.3f} at {x_label} {x:.3g}") for x, y in good)
        ly = 14 + i * 14
        body.append(_mark(shape, left + plot_w + 16, ly - 4, name) + f'<text x="{left + plot_w + 24}" y="{ly}">{escape(name)}</text>')
    return _svg(width, height, label, "".join(body), "lines")
