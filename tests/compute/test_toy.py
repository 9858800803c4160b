"""Toy models of superposition reproduce the geometry of Elhage et al. (2022).

Training uses the notebook's optimiser (AdamW, lr 1e-3, batch 1024) with fewer steps than its
10k: measured over seeds 0-6, 6k steps settle the n=5 geometry (dropped features' norms below
0.1, the kept pair within 1 degree of orthogonal) and 3k steps give the n=20 feature counts.
"""

from __future__ import annotations

import math

import pytest
import torch

from workers.compute.toy import (
    ToyConfig,
    ToyModel,
    _forward,
    _weighted_mse,
    dimensions_per_feature,
    feature_angles,
    feature_dimensionality,
    feature_norms,
    loss_grads,
    neuron_features,
    represented_features,
    sample_features,
    train_toy,
    train_toy_sweep,
    true_features_per_neuron,
)

# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize("kind", ["relu_output", "hidden_relu"])
def test_hand_gradients_equal_autograd(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64).requires_grad_()
    b = (0.1 * torch.randn(3, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    xT = sample_features([1.0, 0.3, 0.05], 64, 7, seed=0).double().transpose(1, 2)  # [I, B, n] -> [I, n, B]
    importance = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    dW, db = loss_grads(kind, W.detach(), b.detach(), xT, importance)
    _weighted_mse(importance, xT, _forward(kind, W, b, xT)[2]).sum().backward()
    assert W.grad is not None and b.grad is not None
    assert torch.allclose(dW, W.grad, atol=1e-14)
    assert torch.allclose(db, b.grad, atol=1e-14)


def test_instances_do_not_interact() -> None:
    gen = torch.Generator().manual_seed(1)
    W, b = torch.randn(4, 6, 2, generator=gen), torch.randn(4, 6, generator=gen)
    xT = sample_features([0.5] * 4, 32, 6, seed=1).transpose(1, 2)  # [I, n, B]
    importance = torch.rand(4, 6, generator=gen)
    dW, db = loss_grads("hidden_relu", W, b, xT, importance)
    dW_half, db_half = loss_grads("hidden_relu", W[2:], b[2:], xT[2:], importance[2:])
    assert torch.allclose(dW[2:], dW_half, atol=1e-7) and torch.allclose(db[2:], db_half, atol=1e-7)


def test_sample_features_are_sparse_uniform() -> None:
    x = sample_features([1.0, 0.1, 0.01], 50_000, 20, seed=2)  # [3, B, n]
    for i, p in enumerate([1.0, 0.1, 0.01]):
        present = x[i][x[i] > 0]
        assert len(present) / x[i].numel() == pytest.approx(p, rel=0.05)
        assert float(present.mean()) == pytest.approx(0.5, abs=0.01)
        assert float(present.max()) < 1.0
    assert torch.equal(x, sample_features([1.0, 0.1, 0.01], 50_000, 20, seed=2))


def _polygon(k: int, radius: float = 1.0) -> torch.Tensor:
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # [k, 2]


def test_feature_dimensionality_of_known_geometries() -> None:
    orthogonal_and_dropped = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert feature_dimensionality(orthogonal_and_dropped).tolist() == pytest.approx([1.0, 1.0, 0.0])
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert feature_dimensionality(antipodal).tolist() == pytest.approx([0.5, 0.5])
    assert feature_dimensionality(_polygon(5, radius=1.3)).tolist() == pytest.approx([0.4] * 5)
    assert feature_dimensionality(_polygon(5)[None].expand(3, 5, 2)).shape == (3, 5)
    assert float(dimensions_per_feature(_polygon(5))) == pytest.approx(2 / 5)
    assert int(represented_features(orthogonal_and_dropped)) == 2
    assert feature_angles(_polygon(4))[0].tolist() == pytest.approx([0.0, 90.0, 180.0, 90.0], abs=1e-4)


def test_neuron_ground_truth_by_hand() -> None:
    W = torch.tensor([[0.9, -0.5], [0.3, 0.05], [0.0, 0.7], [0.6, 0.7]])  # [n_features=4, n_hidden=2]
    assert neuron_features(W) == [[(0, pytest.approx(0.9)), (3, pytest.approx(0.6)), (1, pytest.approx(0.3))],
                                  [(2, pytest.approx(0.7)), (3, pytest.approx(0.7))]]
    q = torch.tensor([0.9, 0.3, 0.6]) / 1.8
    want0 = math.exp(-float((q * q.log()).sum()))
    assert true_features_per_neuron(W).tolist() == pytest.approx([want0, 2.0])  # 0.05 is under the floor
    faint = -(2 * 0.7 / 1.45) * math.log(0.7 / 1.45) - (0.05 / 1.45) * math.log(0.05 / 1.45)
    assert true_features_per_neuron(W, floor=0.0).tolist() == pytest.approx([want0, math.exp(faint)])


def test_config_validation_and_round_trip() -> None:
    config = ToyConfig(kind="hidden_relu", n_features=20, n_hidden=5, feature_probability=0.1, importance_decay=0.7)
    assert ToyConfig.from_dict(config.to_dict()) == config
    assert config.importance()[3] == pytest.approx(0.7**3)
    for bad in ({"kind": "linear"}, {"n_hidden": 6}, {"feature_probability": 0.0}, {"importance_decay": 1.5}):
        with pytest.raises(ValueError):
            ToyConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        train_toy_sweep([ToyConfig(steps=1), ToyConfig(steps=1, n_hidden=3)])


def test_training_is_deterministic_and_lowers_the_loss() -> None:
    config = ToyConfig(n_instances=2, steps=200, seed=3, feature_probability=0.3)
    a, b = train_toy(config), train_toy(config)
    assert torch.equal(a.W, b.W) and torch.equal(a.loss, b.loss)
    untrained = train_toy(ToyConfig(n_instances=2, steps=1, seed=3, feature_probability=0.3))
    assert (a.loss < untrained.loss).all()
    hidden, out = a.forward(sample_features([0.3, 0.3], 8, 5, seed=4))
    assert hidden.shape == (2, 8, 2) and out.shape == (2, 8, 5)


# ---------------------------------------------------------------- the paper's geometry, n=5, m=2


@pytest.fixture(scope="module")
def five_in_two() -> tuple[ToyModel, ToyModel]:
    """Both n=5, m=2 settings trained side by side: dense with importance 0.9^i, and sparse
    (p = 0.05) with equal importance."""
    dense = ToyConfig(n_features=5, n_hidden=2, importance_decay=0.9, n_instances=4, steps=6000)
    sparse = ToyConfig(n_features=5, n_hidden=2, feature_probability=0.05, n_instances=8, steps=6000)
    dense_model, sparse_model = train_toy_sweep([dense, sparse])
    return dense_model, sparse_model


def test_dense_keeps_the_two_most_important_features_orthogonal(five_in_two: tuple[ToyModel, ToyModel]) -> None:
    model = five_in_two[0]
    W = model.W[model.best()]
    norms = feature_norms(W)
    assert (norms[:2] > 0.95).all() and (norms[2:] < 0.15).all(), norms
    assert float(feature_angles(W)[0, 1]) == pytest.approx(90.0, abs=3.0)
    assert int(represented_features(W)) == 2
    assert feature_dimensionality(W)[:2].tolist() == pytest.approx([1.0, 1.0], abs=0.02)


def test_sparse_equal_importance_makes_a_pentagon(five_in_two: tuple[ToyModel, ToyModel]) -> None:
    model = five_in_two[1]
    W = model.W[model.best()]
    assert (feature_norms(W) > 0.9).all()
    angles = torch.sort(torch.atan2(W[:, 1], W[:, 0])).values
    gaps = torch.rad2deg(torch.diff(angles, append=angles[:1] + 2 * math.pi))  # adjacent directions
    assert gaps.tolist() == pytest.approx([72.0] * 5, abs=2.0)
    assert feature_dimensionality(W).tolist() == pytest.approx([0.4] * 5, abs=0.02)


# ---------------------------------------------------------------- n=20, m=5, importance 0.7^i


@pytest.fixture(scope="module")
def twenty_in_five() -> list[ToyModel]:
    base = ToyConfig(n_features=20, n_hidden=5, importance_decay=0.7, n_instances=4, steps=3000)
    return train_toy_sweep([ToyConfig(**{**base.to_dict(), "feature_probability": p}) for p in (1.0, 0.1, 0.01, 0.001)])


def test_represented_features_rise_with_sparsity(twenty_in_five: list[ToyModel]) -> None:
    counts = [int(represented_features(m.W[m.best()])) for m in twenty_in_five]
    assert counts[0] == 5
    assert 8 <= counts[1] <= 10
    assert counts[2] >= 11 and counts[3] >= 11
    assert counts == sorted(counts)
    # Dense: the five most important features, each alone in a dimension.
    dense = twenty_in_five[0].W[twenty_in_five[0].best()]
    assert (feature_norms(dense)[:5] > 0.9).all()
    assert feature_dimensionality(dense)[:5].tolist() == pytest.approx([1.0] * 5, abs=0.05)


def test_dimensions_per_feature_fall_with_sparsity(twenty_in_five: list[ToyModel]) -> None:
    dims = [float(dimensions_per_feature(m.W[m.best()])) for m in twenty_in_five]
    assert dims[0] == pytest.approx(1.0, abs=0.02)
    assert dims == sorted(dims, reverse=True)
    assert dims[-1] < 0.5
