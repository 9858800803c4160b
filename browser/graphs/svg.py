"""The graph drawn as server-side SVG: prompt positions left to right, layers bottom to top (token
embeddings below layer 0, target logits above the last layer), nodes sized by influence and coloured
by kind, edges blue (positive) or red (negative) with width by |weight|."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape

COLOURS = {"unit": "#3b6fd8", "error": "#e0902a", "token": "#777777", "logit": "#2f9e55"}
MAX_EDGES_DRAWN = 600  # the strongest ones; the JSON twin has them all
COL_W, MARGIN_L, MARGIN_T = 96, 120, 24
GAP, ROW_PAD = 14, 12  # centre to centre of nodes sharing a cell; space between layers
CELL_COLS = (COL_W - 6) // GAP


@dataclass(frozen=True)
class Placed:
    x: float
    y: float
    r: float


@dataclass
class Layout:
    nodes: list[Placed]
    row_y: dict[int, float]  # each row's first line
    height: float


def _row(node: dict[str, Any], n_layers: int) -> int:
    """Rows from the top: logits first, then layers from the last down, tokens at the bottom."""
    if node["kind"] == "logit":
        return 0
    if node["kind"] == "token":
        return n_layers + 1
    return n_layers - node["layer"]


def place(nodes: list[dict[str, Any]], n_layers: int) -> Layout:
    """Nodes sharing a cell (row, position) fill it line by line, most influential first, so none
    overlaps; a row is as tall as its fullest cell. Radius by the square root of influence."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i, node in enumerate(nodes):
        cells.setdefault((_row(node, n_layers), node["position"]), []).append(i)
    lines = {row: 1 for row in range(n_layers + 2)}
    for (row, _), members in cells.items():
        lines[row] = max(lines[row], math.ceil(len(members) / CELL_COLS))
    row_y, y = {}, float(MARGIN_T)
    for row in range(n_layers + 2):
        row_y[row] = y
        y += lines[row] * GAP + ROW_PAD
    top = max((abs(n["influence"]) for n in nodes if n["kind"] in ("unit", "error")), default=0.0) or 1.0
    placed: list[Placed] = [Placed(0, 0, 0)] * len(nodes)
    for (row, pos), members in cells.items():
        for k, i in enumerate(sorted(members, key=lambda i: -abs(nodes[i]["influence"]))):
            line, col = divmod(k, CELL_COLS)
            in_line = min(CELL_COLS, len(members) - line * CELL_COLS)
            share = 1.0 if nodes[i]["kind"] in ("token", "logit") else abs(nodes[i]["influence"]) / top
            placed[i] = Placed(MARGIN_L + pos * COL_W + COL_W / 2 + (col - (in_line - 1) / 2) * GAP,
                               row_y[row] + line * GAP, 2.0 + (GAP / 2 - 2.5) * math.sqrt(min(share, 1.0)))
    return Layout(placed, row_y, y)


def _title(node: dict[str, Any]) -> str:
    kind = node["kind"]
    if kind == "unit":
        label = node.get("label") or ("no label yet" if node.get("harvested") or not node.get("source")
                                      else "not harvested yet")
        top = f"; top token {node.get('top_token') or '?'!r}" if node.get("source") else ""
        return (f"{node['unit_kind']} {node['uid']} at {node['token']!r}: {label}{top}; "
                f"activation {node['value']:.3g}; influence {node['influence']:.3g}")
    if kind == "error":
        return (f"the rest of layer {node['layer']}'s MLP output at {node['token']!r} (units not selected; "
                f"with an SAE also its decoder bias and error); influence {node['influence']:.3g}")
    if kind == "token":
        return f"token {node['position']}: {node['token']!r}"
    return f"logit of {node.get('target', '?')!r}: {node['value']:.3g} (probability {node['influence']:.3g})"


def _node_svg(i: int, node: dict[str, Any], at: Placed, groups: list[str]) -> str:
    title = _title(node) + (f"; in supernode {', '.join(groups)}" if groups else "")
    data = (f'data-node="{i}" data-kind="{node["kind"]}" data-title="{escape(title)}"')
    css = "gnode grouped" if groups else "gnode"
    circle = (f'<circle class="{css}" cx="{at.x:.1f}" cy="{at.y:.1f}" r="{at.r:.1f}" '
              f'fill="{COLOURS[node["kind"]]}" {data}><title>{escape(title)}</title></circle>')
    if node["kind"] == "unit" and node.get("source"):
        return f'<a href="/u/{escape(node["uid"])}/" class="gunit">{circle}</a>'
    return circle


def graph_svg(detail: dict[str, Any]) -> str:
    nodes, n_layers = detail["nodes"], detail["n_layers"]
    logits = {entry["id"]: entry["text"] for entry in detail["logits"]}
    for node in nodes:
        if node["kind"] == "logit":
            node["target"] = logits.get(node["index"], "?")
    layout = place(nodes, n_layers)
    placed = layout.nodes
    width = MARGIN_L + max(len(detail["tokens"]), 1) * COL_W + 20
    height = layout.height + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="attribution graph">']
    for row, text in [(0, "logits"), *((n_layers - layer, f"layer {layer}") for layer in range(n_layers)),
                      (n_layers + 1, "tokens")]:
        parts.append(f'<text x="8" y="{layout.row_y[row] + 4:.1f}" class="glayer">{text}</text>')
    for pos, token in enumerate(detail["tokens"]):
        parts.append(f'<text x="{MARGIN_L + pos * COL_W + COL_W / 2:.1f}" y="{height - 6}" class="gtoken" '
                     f'text-anchor="middle">{escape(token["text"][:12])}</text>')
    edges = detail["edges"][:MAX_EDGES_DRAWN]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for edge in reversed(edges):  # strongest drawn last, on top
        a, b = placed[edge["source"]], placed[edge["target"]]
        colour = "#3b6fd8" if edge["weight"] > 0 else "#d8453b"
        width_px = 0.4 + 3.6 * abs(edge["weight"]) / top
        parts.append(f'<line x1="{a.x:.1f}" y1="{a.y:.1f}" x2="{b.x:.1f}" y2="{b.y:.1f}" stroke="{colour}" '
                     f'stroke-width="{width_px:.2f}" stroke-opacity="0.45"/>')
    groups: dict[int, list[str]] = {}
    for group in detail.get("supernodes", []):
        for member in group["nodes"]:
            groups.setdefault(member, []).append(group["name"])
    parts.extend(_node_svg(i, node, placed[i], groups.get(i, [])) for i, node in enumerate(nodes))
    parts.append("</svg>")
    return "".join(parts)
