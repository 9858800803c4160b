"""Each synthetic generator's statistics, from a large sample, equal what it promises."""

from __future__ import annotations

import math

import pytest
import torch

from workers.compute import synthetic, toy

N = 200_000


def _close_rate(observed: torch.Tensor, expected: torch.Tensor, n: int) -> None:
    """Observed presence rates within 5 binomial standard errors of the promised ones."""
    se = (expected * (1 - expected) / n).sqrt().clamp_min(1e-6)
    assert ((observed - expected).abs() <= 5 * se).all(), (observed, expected)


def test_superposition_rates_norms_interference() -> None:
    s = synthetic.superposition(n=64, m=16, l0=4.0, zipf=1.0, interference=0.55, seed=1)
    features, acts = s.sample(N, seed=2)
    p = torch.tensor(s.info["p"])
    assert math.isclose(float(p.sum()), 4.0, rel_tol=1e-5) and p[0] > p[-1]
    _close_rate((features > 0).float().mean(0), p, N)
    assert torch.allclose(s.directions.norm(dim=1), torch.ones(64), atol=1e-5)
    cos = (s.directions @ s.directions.T).fill_diagonal_(0).abs()
    assert float(cos.max()) <= 0.55 + 1e-3
    assert s.info["max_interference"] == pytest.approx(float(cos.max()))
    present = features[features > 0]
    assert float(present.min()) >= 0.5 and float(present.max()) <= 1.5
    assert float(present.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.allclose(acts, features @ s.directions, atol=1e-5)
    assert float((features > 0).sum(1).float().mean()) == pytest.approx(s.true_l0(), rel=0.02)


def test_same_seed_same_set_and_interference_out_of_reach_is_refused() -> None:
    a = synthetic.superposition(n=32, m=8, l0=2.0, seed=5).sample(100, seed=1)
    b = synthetic.superposition(n=32, m=8, l0=2.0, seed=5).sample(100, seed=1)
    assert torch.equal(a[1], b[1])
    with pytest.raises(ValueError):  # Welch bound for 64 directions in 8 dims is ~0.33
        synthetic.near_orthogonal(64, 8, 0.1, torch.Generator().manual_seed(0), max_iters=50)


@pytest.mark.parametrize("rho", [0.5, -0.05, -1 / 9])
def test_correlated_pairs_have_the_promised_presence_correlation(rho: float) -> None:
    s = synthetic.correlated(n_pairs=8, m=12, p=0.1, rho=rho, seed=0)
    features, _ = s.sample(N, seed=3)
    present = (features > 0).float()
    _close_rate(present.mean(0), torch.full((16,), 0.1), N)
    for a, b in s.info["pairs"]:
        r = float(torch.corrcoef(torch.stack([present[:, a], present[:, b]]))[0, 1])
        assert r == pytest.approx(rho, abs=0.01)
    other = float(torch.corrcoef(torch.stack([present[:, 0], present[:, 2]]))[0, 1])
    assert abs(other) < 0.01
    if rho == -1 / 9:  # -p / (1 - p): mutually exclusive
        assert float((present[:, 0] * present[:, 1]).sum()) == 0


def test_hierarchical_children_only_fire_with_their_parent() -> None:
    s = synthetic.hierarchical(n_parents=4, children=3, m=10, p_parent=0.2, p_child=0.4, seed=0)
    features, _ = s.sample(N, seed=4)
    present = features > 0
    _close_rate(present.float().mean(0), torch.tensor(s.info["p"]), N)
    for child, parent in enumerate(s.info["parent_of"]):
        if parent >= 0:
            assert not (present[:, child] & ~present[:, parent]).any()
            given = present[present[:, parent], child].float().mean()
            assert float(given) == pytest.approx(0.4, abs=0.01)


def test_rotated_basis_is_orthonormal_and_not_neuron_aligned() -> None:
    s = synthetic.rotated(n=8, m=8, p=0.2, seed=0)
    assert torch.allclose(s.directions @ s.directions.T, torch.eye(8), atol=1e-5)
    assert float(s.directions.abs().max()) < 0.95  # no feature sits on one neuron
    features, acts = s.sample(N, seed=1)
    _close_rate((features > 0).float().mean(0), torch.full((8,), 0.2), N)
    sets, effective = synthetic.neuron_truth(features, s.directions)
    assert all(len(row) >= 2 for row in sets) and float(effective.min()) > 2
    # orthonormal directions: the features read back exactly
    assert torch.allclose(acts @ s.directions.T, features, atol=1e-5)


@pytest.mark.parametrize("shape", ["circle", "bands"])
def test_nonlinear_features_are_exclusive_and_live_in_a_plane(shape: str) -> None:
    s = synthetic.nonlinear(shape=shape, values=7, m=16, p=0.5, seed=0)
    features, acts = s.sample(N, seed=2)
    present = features > 0
    assert int(present.sum(1).max()) == 1
    _close_rate(present.float().mean(0), torch.tensor(s.info["p"]), N)
    singular = torch.linalg.svdvals(acts[:5000])
    assert float(singular[2] / singular[0]) < 1e-4  # rank 2
    plane = torch.tensor(s.info["plane"])
    if shape == "circle":  # the point is its feature's direction times its magnitude
        which = features.argmax(1)
        on = present.any(1)
        expected = features[on].max(1).values[:, None] * s.directions[which[on]]
        assert torch.allclose(acts[on], expected, atol=1e-5)
    else:  # unit norm on a quarter arc: both plane coordinates non-negative
        coords = acts[present.any(1)] @ plane.T
        assert torch.allclose(coords.norm(dim=1), torch.ones(len(coords)), atol=1e-5)
        assert float(coords.min()) >= -1e-5


def test_compositional_one_of_each_group() -> None:
    s = synthetic.compositional(n_a=4, n_b=5, m=12, seed=0)
    features, _ = s.sample(N, seed=1)
    present = features > 0
    assert (present[:, :4].sum(1) == 1).all() and (present[:, 4:].sum(1) == 1).all()
    _close_rate(present.float().mean(0), torch.tensor(s.info["p"]), N)
    pair = (present[:, 0] & present[:, 4]).float().mean()  # groups independent
    assert float(pair) == pytest.approx(1 / 20, abs=0.003)


def test_toy_set_reproduces_the_toy_models_hidden_activations() -> None:
    cfg = toy.ToyConfig(kind="hidden_relu", n_features=6, n_hidden=3, feature_probability=0.1, steps=200,
                        n_instances=1)
    model = toy.train_toy(cfg)
    W = model.W[0]
    s = synthetic.toy_set(W=W, p=0.1, kind="hidden_relu", seed=0)
    features, acts = s.sample(N, seed=0)
    _close_rate((features > 0).float().mean(0), torch.full((6,), 0.1), N)
    hidden, _ = model.forward(features[None])
    assert torch.allclose(acts, hidden[0], atol=1e-5)
