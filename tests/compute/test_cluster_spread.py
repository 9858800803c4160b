"""Spread and baseline of the context-cluster score on planted embeddings: a unit with two far-apart
meanings scores above every random unit, one with a single meaning inside the random band, and a
clean split does not move with the seed."""

from __future__ import annotations

import pytest
import torch

from workers.compute.cluster_spread import random_baseline, score_spread


def _cloud(centre: torch.Tensor, n: int, noise: float, g: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(centre + noise * torch.randn(n, len(centre), generator=g), dim=1)


def test_planted_units_against_the_random_baseline() -> None:
    g = torch.Generator().manual_seed(0)
    d = 32
    a, b, generic = torch.zeros(d), torch.zeros(d), torch.zeros(d)
    a[0], b[1], generic[2] = 1.0, 1.0, 1.0
    pool = _cloud(generic, 400, 0.3, g)  # windows about nothing in particular: one broad cloud
    two = torch.cat([_cloud(a, 20, 0.05, g), _cloud(b, 20, 0.05, g)])
    one = pool[torch.randperm(400, generator=g)[:40]]
    base = random_baseline(pool, 40, None, draws=24)
    split = score_spread(two, None, None, seeds=4, resamples=12)
    assert split["value"] == pytest.approx(1.0, abs=0.02)  # orthogonal centres: 1 - cos = 1
    assert split["seed_min"] == pytest.approx(split["seed_max"], abs=1e-9)  # a clean split: seeds agree
    assert split["sample_p5"] > base["p95"]
    flat = score_spread(one, None, None, seeds=4, resamples=12)  # a random unit itself: inside the band
    assert base["p5"] <= flat["value"] <= base["p95"] + 0.02
    assert base["p5"] <= base["mean"] <= base["p95"] and (base["n"], base["draws"]) == (40, 24)
    assert split["examples"] == 40 and flat["sample_std"] > 0


def test_bootstrap_draws_whole_examples_with_their_weights() -> None:
    """Two exact meanings, whatever the weights: every resample holding both splits them the same way
    (orthogonal centres, score 1), so the spread is zero."""
    e = torch.eye(4)[:2].repeat(6, 1)  # 12 examples, two exact meanings
    spread = score_spread(e, torch.linspace(1, 2, 12, dtype=torch.float64), None, seeds=3, resamples=10)
    assert spread["value"] == pytest.approx(1.0) and spread["sample_std"] < 1e-9
    assert spread["sample_p5"] == pytest.approx(1.0) == spread["sample_p95"]
    with pytest.raises(ValueError, match="2..4"):
        random_baseline(e[:4], 5, None)
