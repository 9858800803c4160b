"""Server-rendered SVG charts: no script, no CDN, readable without colour (titles and aria labels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

if TYPE_CHECKING:
    from browser.examples.selectors import ActivationHistogram

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


def activation_histogram_svg(hist: ActivationHistogram, width: int = 420, height: int = 90) -> SafeString:
    """A unit's activation histogram (its positive, non-empty span of the log-spaced bin grid) with a
    caption naming the values the bars span."""
    if not hist.counts:
        return mark_safe(f'<p class="empty">The unit never fired above 2^{hist.floor_exponent}.</p>')
    bar_w, top = width / len(hist.counts), float(max(hist.counts))
    bars = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - c / top * height:.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{c / top * height:.1f}"><title>{c}</title></rect>'
        for i, c in enumerate(hist.counts)
    )
    every = "every token" if hist.stride == 1 else f"one token in {hist.stride}"
    label = f"activations from about {hist.low:.3g} to {hist.high:.3g} (log scale, {every})"
    return mark_safe(_svg(width, height, label, bars, "hist") + f'<p class="caption">{escape(label)}</p>')  # noqa: S308


def gram_svg(gram: np.ndarray, label: str, *, size: int = 360) -> SafeString:
    """W^T W feature by feature ([n, n]): a diverging heatmap (red positive, blue negative, scaled by
    the largest magnitude) with the feature indices on both axes; values written in the cells when
    they are large enough to read, and in every cell's tooltip."""
    n = gram.shape[0]
    cell = max(4, min(56, size // max(n, 1)))
    pad, step = 22, max(1, math.ceil(14 / cell))  # an index every `step` cells: labels 14 px apart at least
    scale = float(np.abs(gram).max()) or 1.0
    parts = []
    for i in range(n):
        for j in range(n):
            v = float(gram[i, j])
            colour = "178,34,34" if v >= 0 else "33,102,172"
            x, y = pad + j * cell, pad + i * cell
            parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{cell}" height="{cell}" '
                         f'fill="rgba({colour},{abs(v) / scale:.2f})"><title>W{i}·W{j} = {v:.3g}</title></rect>')
            if cell >= 40:
                ink = "#fff" if abs(v) / scale > 0.6 else "#222"
                parts.append(f'<text class="value" x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                             f'font-size="11" fill="{ink}">{v:.3g}</text>')
    for k in range(0, n, step):
        mid = pad + k * cell + cell / 2
        parts.append(f'<text x="{mid}" y="{pad - 6}" text-anchor="middle" font-size="11">{k}</text>'
                     f'<text x="{pad - 4}" y="{mid + 4}" text-anchor="end" font-size="11">{k}</text>')
    return _svg(pad + n * cell, pad + n * cell, label, "".join(parts), "gram")


def feature_arrows_svg(W: np.ndarray, label: str, *, size: int = 340) -> SafeString:
    """Each feature's direction W_i ([n, m], m = 2, or m = 3 projected on its two principal
    directions) as an arrow from the origin, numbered, lengths to scale (the paper's picture:
    a pentagon for 5 features in 2 dimensions)."""
    points = W if W.shape[1] == 2 else W @ np.linalg.svd(W, full_matrices=False)[2][:2].T  # [n, m] -> [n, 2]
    reach = float(np.linalg.norm(points, axis=1).max()) or 1.0
    c, scale = size / 2, (size / 2 - 26) / reach
    parts = ['<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#b22222"/></marker></defs>',
             f'<line x1="0" y1="{c}" x2="{size}" y2="{c}" stroke="#ccc"/><line x1="{c}" y1="0" x2="{c}" '
             f'y2="{size}" stroke="#ccc"/>',
             f'<circle cx="{c}" cy="{c}" r="{scale:.1f}" fill="none" stroke="#ccc" stroke-dasharray="3 3">'
             f'<title>norm 1</title></circle>' if scale * 1.0 <= c else ""]
    for i, (x, y) in enumerate(points):
        tx, ty = c + x * scale, c - y * scale
        norm, length = float(np.linalg.norm(W[i])), max(math.hypot(x, y), 1e-9)
        lx, ly = tx + 14 * x / length, ty - 14 * y / length  # the number just beyond the tip
        parts.append(f'<g class="feature-arrow"><line x1="{c}" y1="{c}" x2="{tx:.1f}" y2="{ty:.1f}" stroke="#b22222" '
                     f'stroke-width="2" marker-end="url(#arrowhead)"/>'
                     f'<text x="{lx:.1f}" y="{ly + 4:.1f}" text-anchor="middle" font-size="12">{i}</text>'
                     f'<title>feature {i}: ‖W{i}‖ = {norm:.3g}</title></g>')
    body = f'<g data-origin="{c},{c}">' + "".join(parts) + "</g>"
    return _svg(size, size, label, body, "arrows")


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
        f'<title>feature {i}: {v:.3g}</title></circle>'
        for i, v in enumerate(values)
    )
    return _svg(width, height, label, lines + dots, "dims")


def axes(*, left: float, plot_w: float, height: int, y0_px: float, y1_px: float, y0: float, y1: float,
         x_label: str, y_label: str) -> list[str]:
    """A plot's baseline, its two y bounds, the x label under it and the y label in the corner."""
    return [f'<line x1="{left}" x2="{left + plot_w}" y1="{y0_px:.1f}" y2="{y0_px:.1f}" stroke="currentColor"/>',
            f'<text x="{left - 4}" y="{y1_px + 4:.1f}" text-anchor="end">{y1:.3g}</text>',
            f'<text x="{left - 4}" y="{y0_px:.1f}" text-anchor="end">{y0:.3g}</text>',
            f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(x_label)}</text>',
            f'<text x="4" y="8">{escape(y_label)}</text>']
