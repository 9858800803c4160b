"""Influence, pruning and scores of an attribution graph, as circuit-tracer defines them.

The adjacency ``A[target, source]`` holds direct effects; nodes are ordered
``[units..., errors..., tokens..., logits...]``. Influence on the targets is computed on the
row-normalised absolute matrix (each row sums to 1), summed over all path lengths:
``w @ (A + A^2 + ...)`` with ``w`` the logits' probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """How many nodes of each kind, in adjacency order."""

    units: int
    errors: int
    tokens: int
    logits: int

    @property
    def size(self) -> int:
        return self.units + self.errors + self.tokens + self.logits

    def kind_slices(self) -> dict[str, slice]:
        a = self.units
        b = a + self.errors
        c = b + self.tokens
        return {"unit": slice(0, a), "error": slice(a, b), "token": slice(b, c), "logit": slice(c, self.size)}


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with every row scaled to sum 1 (rows of zeros stay zero)."""
    absolute = adjacency.abs()
    return absolute / absolute.sum(1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``weights @ (A + A^2 + ...)``; the graph is acyclic, so the series ends."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return total
        current = current @ normalized
        total += current
    raise RuntimeError("influence did not converge: the graph has a cycle")


def logit_weights(layout: Layout, probabilities: torch.Tensor) -> torch.Tensor:
    weights = torch.zeros(layout.size, dtype=probabilities.dtype)
    weights[layout.size - layout.logits:] = probabilities
    return weights


def threshold_of(scores: torch.Tensor, share: float) -> float:
    """The smallest score among the top scores whose sum first reaches ``share`` of the total."""
    ordered = torch.sort(scores, descending=True).values
    total = ordered.sum()
    if float(total) <= 0:
        return float("inf")
    cumulative = torch.cumsum(ordered, 0) / total
    index = min(int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))), len(ordered) - 1)
    return float(ordered[index])


@dataclass
class Pruned:
    node_mask: torch.Tensor  # [n] bool
    edge_mask: torch.Tensor  # [n, n] bool
    node_influence: torch.Tensor  # [n]
    kept_share: float  # share of the units' and errors' influence carried by the kept ones


def prune(adjacency: torch.Tensor, layout: Layout, probabilities: torch.Tensor,
          node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes that explain ``node_threshold`` of the influence on the logits (tokens and
    logits always), then the edges that explain ``edge_threshold`` of the kept graph's edge influence,
    then drop units and errors left without an outgoing edge (and units without an incoming one)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {value}")
    weights = logit_weights(layout, probabilities)
    node_influence = influence(normalize(adjacency), weights)
    inner = layout.units + layout.errors
    node_mask = node_influence >= threshold_of(node_influence[:inner], node_threshold)
    node_mask[inner:] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = normalize(pruned)
    edge_scores = normalized * (influence(normalized, weights) + weights)[:, None]
    edge_mask = (edge_scores >= threshold_of(edge_scores.flatten(), edge_threshold)) & (pruned != 0)
    _drop_dangling(node_mask, edge_mask, layout)
    total = float(node_influence[:inner].sum())
    kept = float(node_influence[:inner][node_mask[:inner]].sum())
    return Pruned(node_mask, edge_mask, node_influence, kept / total if total > 0 else 1.0)


def _drop_dangling(node_mask: torch.Tensor, edge_mask: torch.Tensor, layout: Layout) -> None:
    inner = layout.units + layout.errors
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:inner] &= edge_mask[:, :inner].any(0)
        node_mask[:layout.units] &= edge_mask[:layout.units].any(1)
        if torch.equal(before, node_mask):
            return


def graph_scores(adjacency: torch.Tensor, layout: Layout, probabilities: torch.Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) as circuit-tracer's ``compute_graph_scores``:
    replacement = the tokens' share of the influence that tokens and error nodes have on the logits;
    completeness = the share of each node's input that comes from non-error nodes, averaged with
    weights = each node's influence plus its own logit weight."""
    weights = logit_weights(layout, probabilities)
    normalized = normalize(adjacency)
    node_influence = influence(normalized, weights)
    kinds = layout.kind_slices()
    token_influence = float(node_influence[kinds["token"]].sum())
    error_influence = float(node_influence[kinds["error"]].sum())
    replacement = token_influence / (token_influence + error_influence) if token_influence + error_influence > 0 else 0.0
    non_error = 1 - normalized[:, kinds["error"]].sum(-1)
    output_influence = node_influence + weights
    completeness = float((non_error * output_influence).sum() / output_influence.sum())
    return replacement, completeness
