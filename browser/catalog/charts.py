"""Server-rendered SVG charts: no script, no CDN, readable without colour (titles and aria labels)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Fractions the toy-model paper marks on its feature-dimensionality plot (sticky points).
DIMENSIONALITY_LINES = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 1 / 3, 1 / 4)


def _svg(width: int, height: int, label: str, body: str, cls: str) -> SafeString:
    text = escape(label)
    return mark_safe(f'<svg class="{cls}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                     f'role="img" aria-label="{text}"><title>{text}</title>{body}</svg>')  # noqa: S308


def bars_svg(counts: Sequence[int], edges: Sequence[float], label: str, *, fmt: str = "{:.3g}",
             width: int = 260, height: int = 70) -> SafeString:
    """A histogram: ``counts[i]`` units between ``edges[i]`` and ``edges[i + 1]``."""
    top = max(counts) if counts else 0
    if not top:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    plot_h, bar_w = height - 14, width / len(counts)
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{plot_h - c / top * plot_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{c / top * plot_h:.1f}"><title>{c} between {fmt.format(edges[i])} and '
        f'{fmt.format(edges[i + 1])}</title></rect>'
        for i, c in enumerate(counts)
    )
    axis = (f'<text x="0" y="{height - 2}">{escape(fmt.format(edges[0]))}</text>'
            f'<text x="{width}" y="{height - 2}" text-anchor="end">{escape(fmt.format(edges[-1]))}</text>')
    return _svg(width, height, label, bars + axis, "chart")


def heatmap_svg(matrix: np.ndarray, label: str, *, cell: int = 14) -> SafeString:
    """A diverging heatmap (blue negative, red positive, scaled by the largest magnitude)."""
    rows, cols = matrix.shape
    scale = float(np.abs(matrix).max()) or 1.0
    cells = []
    for i in range(rows):
        for j in range(cols):
            v = float(matrix[i, j])
            colour = "178,34,34" if v >= 0 else "33,102,172"
            cells.append(f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}" '
                         f'fill="rgba({colour},{abs(v) / scale:.2f})"><title>[{i},{j}] {v:.3f}</title></rect>')
    return _svg(cols * cell, rows * cell, label, "".join(cells), "heatmap")


def dimensionality_svg(values: Sequence[float], label: str, *, width: int = 420, height: int = 180) -> SafeString:
    """One point per feature (y = its dimensionality D_i, 0..1), with the paper's fractions marked."""
    if not values:
        return mark_safe(f'<p class="empty">{escape(label)}: no values.</p>')
    left, plot_w, plot_h = 34, width - 40, height - 10
    lines = "".join(
        f'<line x1="{left}" x2="{width}" y1="{5 + (1 - f) * plot_h:.1f}" y2="{5 + (1 - f) * plot_h:.1f}"/>'
        f'<text x="{left - 4}" y="{9 + (1 - f) * plot_h:.1f}" text-anchor="end">{f:.2g}</text>'
        for f in DIMENSIONALITY_LINES
    )
    step = plot_w / max(len(values), 1)
    dots = "".join(
        f'<circle cx="{left + (i + 0.5) * step:.1f}" cy="{5 + (1 - min(max(v, 0.0), 1.0)) * plot_h:.1f}" r="3">'
        f'<title>feature {i}: {v:.3f}</title></circle>'
        for i, v in enumerate(values)
    )
    return _svg(width, height, label, lines + dots, "dims")
