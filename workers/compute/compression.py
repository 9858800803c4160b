"""The compression hypothesis on toy models: does superposition fall as features co-occur?

Toy models of superposition (``workers.compute.toy``, hidden-ReLU kind, so neurons are privileged)
are trained on features in pairs: features 2i and 2i+1 are each present with probability p, and
their presences have correlation rho (rho = -p / (1 - p): never together; rho = 1: always together;
magnitudes stay independent and uniform on [0, 1)). Elhage et al. (2022, "Correlated and
anticorrelated features") find anti-correlated features share dimensions (they never interfere) and
correlated ones are kept orthogonal or merged, so superposition should fall as rho rises.

Every (p, rho) setting trains ``instances`` seeds side by side in one tensor, with the gradients of
``toy.loss_grads``. Measured per instance: features represented (||W_f|| > 0.5) per dimension, the
paper's dimensions per feature m / ||W||_F^2, each neuron's true number of features (mean over
neurons), and the mean cosine between the two directions of a represented pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from workers.compute import toy

MAX_INSTANCES = 512
MERGED_COSINE = 0.9
"""Two represented features closer than this in direction are one direction (a merged pair)."""


@dataclass(frozen=True)
class CompressionConfig:
    """A grid of correlated-pair toy models; saved with the results."""

    n_pairs: int = 10
    """Feature pairs (n = 2 x pairs features)."""
    n_hidden: int = 5
    """m: hidden neurons."""
    probabilities: tuple[float, ...] = (0.05, 0.1)
    """p: each feature's presence rate (one curve each)."""
    correlations: tuple[float, ...] = (-1.0, 0.0, 0.25, 0.5, 0.75, 1.0)
    """rho: presence correlation within a pair; -1 stands for the lowest possible, -p / (1 - p) (any
    other value must be at least that for every p)."""
    instances: int = 4
    """Seeds per setting (the spread shown)."""
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_hidden < 2 * self.n_pairs <= 2000:
            raise ValueError("need 1 <= n_hidden < 2 x pairs <= 2000")
        if not self.probabilities or any(not 0 < p < 0.5 for p in self.probabilities):
            raise ValueError("probabilities must be in (0, 0.5)")
        if not self.correlations or any(not -1 <= r <= 1 for r in self.correlations):
            raise ValueError("correlations must be in [-1, 1]")
        for p in self.probabilities:
            low = [r for r in self.correlations if r != -1 and r < lowest_correlation(p)]
            if low:
                raise ValueError(f"at p = {p} no pair has correlation {low[0]} (the lowest is "
                                 f"{lowest_correlation(p):.4f}; -1 stands for it)")
        if not 1 <= self.instances * len(self.settings()) <= MAX_INSTANCES:
            raise ValueError(f"settings x instances must be 1..{MAX_INSTANCES}")
        if not (1 <= self.steps <= 200_000 and 1 <= self.batch_size <= 8192 and 0 < self.lr < 1):
            raise ValueError("steps must be 1..200000, batch size 1..8192, lr in (0, 1)")

    def settings(self) -> list[tuple[float, float]]:
        """(p, rho) of every setting, rho = -1 replaced by the lowest correlation p allows."""
        return [(p, lowest_correlation(p) if r == -1 else r) for p in self.probabilities for r in self.correlations]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lowest_correlation(p: float) -> float:
    """The presence correlation of two rate-p features that never fire together."""
    return -p / (1 - p)


def pair_edges(p: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """[I] rates and correlations -> [I, 3] cumulative probabilities of (both, first only, second only).

    P(both) = p^2 + rho p (1 - p) gives presence correlation rho at marginal rate p."""
    both = p * p + rho * p * (1 - p)
    return torch.stack([both, p, 2 * p - both], dim=1)


def sample_pairs_T(edges: torch.Tensor, n_pairs: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """Features [I, 2 x pairs, batch] (feature-major, as toy training wants): one uniform per pair
    picks both / first / second / neither; magnitudes uniform on [0, 1)."""
    u = torch.from_numpy(rng.random((len(edges), n_pairs, batch), dtype=np.float32))
    e = edges[:, None, None, :].float()  # [I, 1, 1, 3]
    first = u < e[..., 1]
    second = (u < e[..., 0]) | ((u >= e[..., 1]) & (u < e[..., 2]))
    present = torch.stack([first, second], dim=2).reshape(len(edges), 2 * n_pairs, batch)  # [I, n, B]
    return present * torch.from_numpy(rng.random((len(edges), 2 * n_pairs, batch), dtype=np.float32))


def train_pairs(config: CompressionConfig, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """W [settings x instances, n, m] of hidden-ReLU toy models trained on correlated pairs."""
    n, m = 2 * config.n_pairs, config.n_hidden
    settings = config.settings()
    p = torch.tensor([s[0] for s in settings]).repeat_interleave(config.instances)
    rho = torch.tensor([s[1] for s in settings]).repeat_interleave(config.instances)
    edges = pair_edges(p, rho)
    rng = np.random.default_rng(config.seed)
    W = torch.from_numpy(rng.standard_normal((len(p), n, m), dtype=np.float32)) * math.sqrt(2.0 / (n + m))
    b = torch.zeros(len(p), n)
    importance = torch.ones(len(p), n)
    opt = torch.optim.AdamW([W, b], lr=config.lr)
    with toy.single_thread():
        for step in range(config.steps):
            xT = sample_pairs_T(edges, config.n_pairs, config.batch_size, rng)
            W.grad, b.grad = toy.loss_grads("hidden_relu", W, b, xT, importance)
            opt.step()
            if progress is not None and (step + 1) % 500 == 0:
                progress(step + 1, config.steps)
    return W.detach()


def pair_cosine(W: torch.Tensor) -> float:
    """Mean cosine between the two directions of each pair whose features are both represented
    (nan when no pair is)."""
    norms = W.norm(dim=1)
    cos = []
    for i in range(0, W.shape[0] - 1, 2):
        if norms[i] > toy.REPRESENTED_NORM and norms[i + 1] > toy.REPRESENTED_NORM:
            cos.append(float(W[i] @ W[i + 1] / (norms[i] * norms[i + 1])))
    return sum(cos) / len(cos) if cos else float("nan")


def distinct_features(W: torch.Tensor, same: float = MERGED_COSINE) -> int:
    """Represented features whose direction is not a copy (cosine > ``same``) of an earlier
    represented feature's: a pair the model merged into one direction counts once."""
    norms = W.norm(dim=1)
    kept: list[torch.Tensor] = []
    for f in range(W.shape[0]):
        if norms[f] > toy.REPRESENTED_NORM:
            u = W[f] / norms[f]
            if all(float(u @ v) <= same for v in kept):
                kept.append(u)
    return len(kept)


def measure(W: torch.Tensor) -> dict[str, float]:
    """One instance's superposition: W [n, m]."""
    m = W.shape[1]
    return {"distinct_per_dim": distinct_features(W) / m,
            "features_per_dim": float(toy.represented_features(W)) / m,
            "dims_per_feature": float(toy.dimensions_per_feature(W)),
            "features_per_neuron": float(toy.true_features_per_neuron(W).mean()),
            "pair_cosine": pair_cosine(W)}


def curve(config: CompressionConfig, W: torch.Tensor) -> list[dict[str, Any]]:
    """One row per setting: p, rho, each metric's mean, min and max over the instances, and the
    first instance's W (for a page to draw)."""
    rows = []
    for s, (p, rho) in enumerate(config.settings()):
        per = [measure(W[s * config.instances + i]) for i in range(config.instances)]
        row: dict[str, Any] = {"p": p, "rho": round(rho, 6)}
        for key in per[0]:
            values = [v[key] for v in per if math.isfinite(v[key])]
            row[key] = _spread(values)
        row["W"] = W[s * config.instances].tolist()
        rows.append(row)
    return rows


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}
