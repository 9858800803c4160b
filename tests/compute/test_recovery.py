"""Recovery metrics on dictionaries whose answer is known by construction."""

from __future__ import annotations

import math

import pytest
import torch

from workers.compute import recovery, synthetic


def _reader(directions: torch.Tensor) -> torch.Tensor:
    """[m, n]: reads true feature activations back from activations (n <= m, full rank)."""
    return torch.linalg.pinv(directions)


def _exact(x: torch.Tensor, reader: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ reader - 1e-4)


def test_perfect_dictionary_scores_one() -> None:
    truth = synthetic.hierarchical(n_parents=3, children=2, m=256, p_parent=0.2, p_child=0.3, seed=0)
    reader = _reader(truth.directions)
    out = recovery.evaluate(lambda x: _exact(x, reader), truth.directions, truth, n_samples=8192,
                            decode=lambda f: f @ truth.directions)
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-5) and out["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert out["f1"] == pytest.approx(1.0) and out["feature_f1"] == pytest.approx(1.0)
    assert out["split_features"] == 0 and out["absorbing_latents"] == 0
    assert out["fvu"] < 1e-6 and out["dead_fraction"] == 0
    assert out["l0"] == pytest.approx(out["true_l0"])


def test_random_dictionary_scores_chance() -> None:
    """A random decoder and latents that fire at random (rate r, independent of the input): F1 is
    2pr / (p + r) per latent, MMCS the mean largest of d random cosines (simulated here by hand)."""
    n, m, d, r = 64, 32, 128, 0.05
    truth = synthetic.superposition(n=n, m=m, l0=3.2, seed=0)  # p = 0.05 for every feature
    g = torch.Generator().manual_seed(9)
    W_dec = torch.randn(d, m, generator=g)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return (torch.rand(len(x), d, generator=g) < r).float()

    out = recovery.evaluate(encode, W_dec, truth, n_samples=40_000)
    p = 0.05
    assert out["f1"] == pytest.approx(2 * p * r / (p + r), rel=0.1)
    # chance MMCS: for a fixed unit vector, the largest of d cosines with random Gaussian vectors
    h = torch.Generator().manual_seed(3)
    target = torch.zeros(m)
    target[0] = 1.0
    draws = torch.randn(400, d, m, generator=h)
    chance = float((draws[..., 0] / draws.norm(dim=-1)).max(dim=1).values.mean())
    assert out["mmcs"] == pytest.approx(chance, abs=0.05)
    mean_abs_cos = math.sqrt(2 / (math.pi * m))  # E|cos| of one random pair
    assert mean_abs_cos < out["mcc"] < chance + 0.1
    assert out["mcc"] < 0.6


def test_one_feature_split_in_two_is_counted_once() -> None:
    truth = synthetic.rotated(n=8, m=8, p=0.2, seed=0)
    reader = _reader(truth.directions)
    W_dec = torch.cat([truth.directions, truth.directions[3:4]])

    def encode(x: torch.Tensor) -> torch.Tensor:
        f = _exact(x, reader)
        low, high = f[:, 3] * (f[:, 3] < 1), f[:, 3] * (f[:, 3] >= 1)
        f[:, 3] = low
        return torch.cat([f, high[:, None]], dim=1)

    out = recovery.evaluate(encode, W_dec, truth, n_samples=16_384)
    assert out["split_features"] == 1
    assert out["absorbing_latents"] == 0
    assert out["mcc"] == pytest.approx(1.0, abs=1e-5)


def test_child_absorbing_its_parent_is_counted_once() -> None:
    truth = synthetic.hierarchical(n_parents=2, children=2, m=256, p_parent=0.3, p_child=0.4, seed=1)
    reader = _reader(truth.directions)
    parent_of = truth.info["parent_of"]
    child, parent = 2, parent_of[2]
    W_dec = truth.directions.clone()
    W_dec[child] = truth.directions[child] + truth.directions[parent]

    def encode(x: torch.Tensor) -> torch.Tensor:
        f = _exact(x, reader)
        f[:, parent] = f[:, parent] * (f[:, child] == 0)  # the parent latent goes quiet under the child
        return f

    out = recovery.evaluate(encode, W_dec, truth, n_samples=16_384)
    assert out["absorbing_latents"] == 1
    assert out["split_features"] == 0
    assert out["recall"] < 1.0  # the parent's latent misses the inputs its child absorbed
