"""The compression-hypothesis sweep: its sampler keeps what it promises, its measures count what a
hand count gives on planted weights, and its curve's spread is the min/mean/max over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.compute import compression as c


@pytest.mark.parametrize(("p", "rho"), [(0.1, c.lowest_correlation(0.1)), (0.1, 0.0), (0.2, 0.5), (0.05, 1.0)])
def test_pairs_have_the_promised_rate_and_correlation(p: float, rho: float) -> None:
    edges = c.pair_edges(torch.tensor([p], dtype=torch.float64), torch.tensor([rho], dtype=torch.float64))
    x = c.sample_pairs_T(edges, 4, 200_000, np.random.default_rng(0))[0]  # [8, B]
    present = (x > 0).double()
    assert present.mean(dim=1).tolist() == pytest.approx([p] * 8, abs=0.004)
    corr = torch.corrcoef(present)
    for i in range(0, 8, 2):
        assert float(corr[i, i + 1]) == pytest.approx(rho, abs=0.01)
        assert float(corr[i, (i + 2) % 8]) == pytest.approx(0.0, abs=0.01)  # pairs are independent
    values = x[x > 0]
    assert float(values.mean()) == pytest.approx(0.5, abs=0.01) and float(values.max()) < 1.0


def test_lowest_correlation_never_fires_together_and_one_always_does() -> None:
    p = 0.1
    edges = c.pair_edges(torch.tensor([p, p]), torch.tensor([c.lowest_correlation(p), 1.0]))
    x = c.sample_pairs_T(edges, 3, 50_000, np.random.default_rng(1)) > 0  # [2, 6, B]
    assert not (x[0, 0::2] & x[0, 1::2]).any()
    assert torch.equal(x[1, 0::2], x[1, 1::2])


def test_measures_on_planted_weights() -> None:
    W = torch.tensor([[1.0, 0.0, 0.0],   # pair 0: merged into one direction (cosine 1)
                      [0.9, 0.1, 0.0],
                      [0.0, 1.0, 0.0],   # pair 1: antipodal
                      [0.0, -1.0, 0.0],
                      [0.0, 0.0, 1.0],   # pair 2: one represented, one dropped
                      [0.0, 0.0, 0.1]])
    # Represented: 5 (norm > 0.5); distinct: feature 1 copies 0 -> 4 directions.
    assert c.distinct_features(W) == 4
    cos01 = 0.9 / math.sqrt(0.82)
    assert c.pair_cosine(W) == pytest.approx((cos01 - 1.0) / 2)  # pair 2 has a dropped feature
    m = c.measure(W)
    assert m["distinct_per_dim"] == pytest.approx(4 / 3) and m["features_per_dim"] == pytest.approx(5 / 3)
    assert m["dims_per_feature"] == pytest.approx(3 / float((W**2).sum()))


def test_curve_rows_spread_over_seeds() -> None:
    config = c.CompressionConfig(n_pairs=2, n_hidden=2, probabilities=(0.1,), correlations=(0.0, 1.0), instances=3,
                                 steps=1)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, 2, generator=g)
    rows = c.curve(config, W)
    assert [(r["p"], r["rho"]) for r in rows] == [(0.1, 0.0), (0.1, 1.0)]
    for s, row in enumerate(rows):
        values = [float(torch.tensor(c.distinct_features(W[s * 3 + i])) / 2) for i in range(3)]
        assert row["distinct_per_dim"] == {"mean": pytest.approx(sum(values) / 3), "min": min(values),
                                           "max": max(values), "n": 3}
        assert row["W"] == W[s * 3].tolist()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="2 x pairs"):
        c.CompressionConfig(n_pairs=2, n_hidden=4)
    with pytest.raises(ValueError, match="probabilities"):
        c.CompressionConfig(probabilities=(0.6,))
    with pytest.raises(ValueError, match="correlations"):
        c.CompressionConfig(correlations=(1.5,))
    with pytest.raises(ValueError, match="the lowest is -0.0526"):  # P(both) would be negative
        c.CompressionConfig(probabilities=(0.05,), correlations=(-0.5,))
    assert c.CompressionConfig(probabilities=(0.2,), correlations=(-1.0,)).settings() == [(0.2, -0.25)]
