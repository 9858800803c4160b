"""Influence, pruning and circuit-tracer's scores on graphs small enough to work out by hand."""

from __future__ import annotations

import pytest
import torch

from workers.compute.graph_scores import Layout, graph_scores, influence, normalize, prune

# Nodes: unit 0, error 1, token 2, logit 3. The logit reads 2 from the unit and 1 from the error
# (normalised 2/3, 1/3); the unit reads -4 from the token (normalised 1).
LAYOUT = Layout(units=1, errors=1, tokens=1, logits=1)
ADJ = torch.tensor([[0.0, 0, -4, 0], [0, 0, 0, 0], [0, 0, 0, 0], [2, 1, 0, 0]])


def test_influence_by_hand() -> None:
    weights = torch.tensor([0.0, 0, 0, 1])
    assert influence(normalize(ADJ), weights).tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3, 0])


def test_scores_by_hand() -> None:
    replacement, completeness = graph_scores(ADJ, LAYOUT, torch.tensor([1.0]))
    # token influence 2/3 against error influence 1/3
    assert replacement == pytest.approx(2 / 3)
    # non-error share of each row (1, 1, 1, 2/3) weighted by influence + logit weight (2/3, 1/3, 2/3, 1)
    assert completeness == pytest.approx((2 / 3 + 1 / 3 + 2 / 3 + 2 / 3) / (2 / 3 + 1 / 3 + 2 / 3 + 1))


def test_prune_keeps_the_share_asked() -> None:
    # Two units feeding the logit, 9 to 1: a 0.8 share keeps only the first.
    layout = Layout(units=2, errors=0, tokens=1, logits=1)
    adjacency = torch.tensor([[0.0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0], [9, 1, 0, 0]])
    pruned = prune(adjacency, layout, torch.tensor([1.0]), node_threshold=0.8, edge_threshold=1.0)
    assert pruned.node_mask.tolist() == [True, False, True, True]
    assert pruned.kept_share == pytest.approx(0.9)
    assert pruned.edge_mask.nonzero().tolist() == [[0, 2], [3, 0]]
    everything = prune(adjacency, layout, torch.tensor([1.0]), node_threshold=1.0, edge_threshold=1.0)
    assert everything.node_mask.all() and everything.kept_share == pytest.approx(1.0)
    with pytest.raises(ValueError, match="node_threshold"):
        prune(adjacency, layout, torch.tensor([1.0]), node_threshold=1.5)
