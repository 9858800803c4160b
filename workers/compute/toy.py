"""Toy models of superposition (Elhage et al. 2022), trained here so every score has ground truth.

n sparse features are squeezed into m < n dimensions and read back out. Two models, both with
``W`` stored as in the paper's notebook, ``[instances, n_features, n_hidden]``, so ``W[i, f]`` is
feature f's direction (a column of the paper's m x n matrix):

- ``relu_output``: x' = ReLU(W^T W x + b). The hidden space has no privileged basis.
- ``hidden_relu``: h = ReLU(W x), x' = ReLU(W^T h + b). The ReLU makes the hidden coordinates
  neurons, so ``W[i, f, k]`` is how strongly feature f drives neuron k: the ground truth of
  each neuron's features.

Several instances (independent initialisations, and possibly different feature probabilities)
train side by side in one tensor; as in the paper, the lowest-loss instance of a setting is the
one to read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

KINDS = ("relu_output", "hidden_relu")
REPRESENTED_NORM = 0.5
"""A feature counts as represented when its direction has norm above this (the paper's figures
show learned norms near 1 for kept features and near 0 for dropped ones)."""
EVAL_BATCH = 16384
"""Samples of the fixed evaluation batch that ranks instances (shared across instances)."""
EVAL_CHUNK = 2048
"""The evaluation batch goes through in chunks of this many samples (bounds memory)."""
NEURON_WEIGHT_FLOOR = 0.1
"""A feature counts as one of a neuron's features when its weight on the neuron exceeds this:
trained models leave the weights of unused connections near 0.05 or below."""
MAX_ELEMENTS = 1 << 25
"""Instances x features x batch per step: each [I, n, B] float32 tensor stays under 128 MiB."""


@dataclass(frozen=True)
class ToyConfig:
    """One toy-model setting; saved with the trained weights."""

    kind: str = "relu_output"
    """``relu_output`` (x' = ReLU(W^T W x + b)) or ``hidden_relu`` (h = ReLU(W x), x' = ReLU(W^T h + b))."""
    n_features: int = 5
    """n: the sparse input features."""
    n_hidden: int = 2
    """m: the hidden dimensions (neurons for ``hidden_relu``)."""
    feature_probability: float = 1.0
    """p: each feature is uniform on [0, 1] with probability p, else 0 (sparsity S = 1 - p)."""
    importance_decay: float = 1.0
    """Feature f's weight in the loss is decay**f (1.0: all features equally important)."""
    n_instances: int = 8
    """Independent initialisations trained side by side; read the lowest-loss one."""
    steps: int = 10_000
    """Optimizer steps (the notebook's 10k; tests/compute/test_toy.py records how few suffice)."""
    batch_size: int = 1024
    """Samples per step, per instance."""
    lr: float = 1e-3
    """AdamW learning rate (constant, default weight decay, as in the notebook)."""
    seed: int = 0
    """Seeds initialisation, training data and the evaluation batch."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} (got {self.kind!r})")
        if not 1 <= self.n_hidden <= self.n_features <= 10_000:
            raise ValueError("need 1 <= n_hidden <= n_features <= 10000")
        if not 0.0 < self.feature_probability <= 1.0:
            raise ValueError(f"feature probability must be in (0, 1] (got {self.feature_probability})")
        if not 0.0 < self.importance_decay <= 1.0:
            raise ValueError(f"importance decay must be in (0, 1] (got {self.importance_decay})")
        if not (1 <= self.n_instances <= 1024 and 1 <= self.steps <= 1_000_000 and 1 <= self.batch_size <= 65536):
            raise ValueError("instances must be 1..1024, steps 1..1e6, batch size 1..65536")
        if not 0.0 < self.lr < 1.0:
            raise ValueError(f"learning rate must be in (0, 1) (got {self.lr})")

    def importance(self) -> torch.Tensor:
        """[n_features] loss weights decay**f."""
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ToyModel:
    """Trained instances of one setting."""

    config: ToyConfig
    W: torch.Tensor
    """[instances, n_features, n_hidden]: W[i, f] is feature f's direction in instance i."""
    b: torch.Tensor
    """[instances, n_features] output bias."""
    loss: torch.Tensor
    """[instances] importance-weighted MSE on a fixed evaluation batch (the same for every instance)."""

    def best(self) -> int:
        """The index of the lowest-loss instance."""
        return int(self.loss.argmin())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [instances, batch, n_features] -> (hidden [instances, batch, n_hidden], output like x)."""
        _, h, out = _forward(self.config.kind, self.W, self.b, x.transpose(1, 2))
        return h.transpose(1, 2), out.transpose(1, 2)


# The training math runs feature-major, x as [I, n, B]: CPU bmm with the batch as the last
# (contiguous) dimension is about 5x faster here than with [I, B, n] and a tiny inner dimension.


def _forward(
    kind: str, W: torch.Tensor, b: torch.Tensor, xT: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """xT [I, n, B] -> ((W x)^T [I, m, B], hidden^T [I, m, B], output^T [I, n, B])."""
    preT = torch.bmm(W.transpose(1, 2), xT)
    hT = torch.relu(preT) if kind == "hidden_relu" else preT
    outT = torch.relu(torch.baddbmm(b[:, :, None], W, hT))
    return preT, hT, outT


def _weighted_mse(importance: torch.Tensor, xT: torch.Tensor, outT: torch.Tensor) -> torch.Tensor:
    """[I] importance-weighted MSE, mean over batch and features (the notebook's loss)."""
    return (importance[:, :, None] * (outT - xT) ** 2).mean(dim=(1, 2))


def loss_grads(
    kind: str, W: torch.Tensor, b: torch.Tensor, xT: torch.Tensor, importance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the summed per-instance losses with respect to W [I, n, m] and b [I, n].

    ``xT`` is [I, n, B] and ``importance`` [I, n]. Written out by hand because autograd's
    bookkeeping costs more than these tiny matmuls (a test checks it against autograd).
    """
    preT, hT, outT = _forward(kind, W, b, xT)
    scale = importance[:, :, None] * (2.0 / (xT.shape[1] * xT.shape[2]))  # [I, n, 1]
    dzT = (outT - xT).mul_(scale).mul_(outT > 0)  # d loss / d (pre-ReLU output), [I, n, B]
    dhT = torch.bmm(W.transpose(1, 2), dzT)  # [I, m, B]
    if kind == "hidden_relu":
        dhT.mul_(preT > 0)
    dW = torch.bmm(dzT, hT.transpose(1, 2)).add_(torch.bmm(xT, dhT.transpose(1, 2)))  # [I, n, m]
    return dW, dzT.sum(dim=2)


def _sparsify_(u: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """Turn uniforms u [I, n, B] into sparse features for probabilities [I], in place.

    One uniform per entry serves twice: the feature is present when u >= 1 - p, and then
    (u - (1 - p)) / p is uniform on [0, 1).
    """
    p = probability[:, None, None]  # [I] -> [I, 1, 1]
    return u.sub_(1.0 - p).div_(p).relu_()


def _sample_T(probability: torch.Tensor, u: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Fill ``u`` [I, n, B] with fresh sparse features (numpy's generator: twice torch's speed here)."""
    rng.random(out=u.numpy(), dtype=np.float32)
    return _sparsify_(u, probability)


def sample_features(probability: Sequence[float], batch: int, n_features: int, seed: int) -> torch.Tensor:
    """Sparse inputs [len(probability), batch, n_features]: each feature uniform on [0, 1) with
    probability p, else 0."""
    u = torch.empty(len(probability), n_features, batch)
    xT = _sample_T(torch.tensor(probability, dtype=torch.float32), u, np.random.default_rng(seed))
    return xT.transpose(1, 2)


def _check_compatible(configs: Sequence[ToyConfig]) -> None:
    shared = ("kind", "n_features", "n_hidden", "steps", "batch_size", "lr", "seed")
    first = configs[0]
    for c in configs[1:]:
        diff = [f for f in shared if getattr(c, f) != getattr(first, f)]
        if diff:
            raise ValueError(f"settings trained side by side must share {shared}; these differ: {diff}")
    instances = sum(c.n_instances for c in configs)
    if instances * first.n_features * max(first.batch_size, EVAL_CHUNK) > MAX_ELEMENTS:
        raise ValueError(f"instances x features x batch must stay under {MAX_ELEMENTS} (memory)")


def _eval_loss(
    kind: str, W: torch.Tensor, b: torch.Tensor, probability: torch.Tensor, importance: torch.Tensor, seed: int
) -> torch.Tensor:
    """[I] loss on EVAL_BATCH fresh samples, the same samples for every instance of a setting."""
    rng = np.random.default_rng([seed, 1])
    total = torch.zeros(len(W))
    u = torch.empty(len(W), W.shape[1], EVAL_CHUNK)
    for _ in range(EVAL_BATCH // EVAL_CHUNK):
        # Common random numbers: one draw per feature and sample, shared by all instances.
        u.copy_(torch.from_numpy(rng.random((1, W.shape[1], EVAL_CHUNK), dtype=np.float32)))
        xT = _sparsify_(u, probability)
        total += _weighted_mse(importance, xT, _forward(kind, W, b, xT)[2])
    return total / (EVAL_BATCH // EVAL_CHUNK)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: each step's tensors are small, and OpenMP's fork-join then costs
    more than it saves (measured here 40x slower with two threads on a busy two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_toy_sweep(
    configs: Sequence[ToyConfig], progress: Callable[[int, int], None] | None = None
) -> list[ToyModel]:
    """Train several settings side by side in one tensor, one ``ToyModel`` per config.

    The settings may differ in feature probability, importance decay and instance count, and
    must share everything else. Instances never interact: the loss is a sum over instances and
    AdamW is elementwise. ``progress(step, steps)`` is called every 1000 steps.
    """
    _check_compatible(configs)
    with single_thread():
        return _train(configs, progress)


def _train(configs: Sequence[ToyConfig], progress: Callable[[int, int], None] | None) -> list[ToyModel]:
    first = configs[0]
    n, m, B = first.n_features, first.n_hidden, first.batch_size
    counts = [c.n_instances for c in configs]
    p = torch.tensor([c.feature_probability for c in configs]).repeat_interleave(torch.tensor(counts))  # [I]
    importance = torch.cat([c.importance().expand(c.n_instances, n) for c in configs])  # [I, n]
    rng = np.random.default_rng(first.seed)
    W = torch.from_numpy(rng.standard_normal((len(p), n, m), dtype=np.float32)) * math.sqrt(2.0 / (n + m))
    b = torch.zeros(len(p), n)
    opt = torch.optim.AdamW([W, b], lr=first.lr)
    u = torch.empty(len(p), n, B)
    for step in range(first.steps):
        W.grad, b.grad = loss_grads(first.kind, W, b, _sample_T(p, u, rng), importance)
        opt.step()
        if progress is not None and (step + 1) % 1000 == 0:
            progress(step + 1, first.steps)
    loss = _eval_loss(first.kind, W, b, p, importance, first.seed)
    return [
        ToyModel(c, W_c.clone(), b_c.clone(), loss_c)
        for c, W_c, b_c, loss_c in zip(configs, W.split(counts), b.split(counts), loss.split(counts), strict=True)
    ]


def train_toy(config: ToyConfig, progress: Callable[[int, int], None] | None = None) -> ToyModel:
    """Train ``config.n_instances`` instances of one setting."""
    return train_toy_sweep([config], progress)[0]


def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """[..., n_features, n_hidden] -> [..., n_features] ||W_f||."""
    return W.norm(dim=-1)


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """[..., n_features, n_hidden] -> [..., n_features] D_f = ||W_f||^2 / sum_g (W_f_hat . W_g)^2.

    The fraction of a dimension feature f gets: 1 for a feature alone in its own dimension, 1/2
    for an antipodal pair, 2/5 for a pentagon. A zero direction has dimensionality 0.
    """
    norms = feature_norms(W)
    W_hat = W / norms.clamp_min(1e-12)[..., None]
    overlaps = (W_hat @ W.transpose(-1, -2)) ** 2  # [..., n, n]
    D = norms**2 / overlaps.sum(dim=-1).clamp_min(1e-24)
    return torch.where(norms > 1e-6, D, torch.zeros(()))


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """[..., n_features, n_hidden] -> [...] m / ||W||_F^2 (the paper's "dimensions per feature")."""
    return W.shape[-1] / (W**2).sum(dim=(-1, -2))


def represented_features(W: torch.Tensor, threshold: float = REPRESENTED_NORM) -> torch.Tensor:
    """[..., n_features, n_hidden] -> [...] number of features with ||W_f|| > threshold."""
    return (feature_norms(W) > threshold).sum(dim=-1)


def feature_angles(W: torch.Tensor) -> torch.Tensor:
    """[n_features, n_hidden] -> [n_features, n_features] angle in degrees between directions."""
    W_hat = W / feature_norms(W).clamp_min(1e-12)[:, None]
    return torch.rad2deg(torch.arccos((W_hat @ W_hat.T).clamp(-1.0, 1.0)))


def neuron_features(W: torch.Tensor, *, floor: float = NEURON_WEIGHT_FLOOR) -> list[list[tuple[int, float]]]:
    """Each hidden neuron's ground-truth features in a ``hidden_relu`` model, W [n_features, n_hidden].

    Neuron k computes ReLU(sum_f W[f, k] x_f) with x_f >= 0, so exactly the features with a
    positive weight can drive it; those above ``floor`` are listed, strongest first, as
    (feature, weight). Negative weights only inhibit.
    """
    out = []
    for k in range(W.shape[1]):
        column = W[:, k]
        ids = (column > floor).nonzero().flatten().tolist()
        out.append(sorted(((f, float(column[f])) for f in ids), key=lambda fw: -fw[1]))
    return out


def true_features_per_neuron(W: torch.Tensor, *, floor: float = NEURON_WEIGHT_FLOOR) -> torch.Tensor:
    """[n_features, n_hidden] -> [n_hidden]: each neuron's effective number of true features.

    exp(entropy) of the shares of the neuron's weights above ``floor`` (the features
    ``neuron_features`` lists). Every feature has the same distribution, so when features come
    one at a time (the sparse limit) these are the shares of the neuron's input each feature
    brings: what a perfect dictionary's features-per-neuron score should recover. ``floor=0``
    counts every positive weight, including the faint ones a trained model leaves on features it
    does not represent (with many such features they add up to a visible share).
    """
    w = torch.where(W > floor, W, torch.zeros(())).to(torch.float64).T  # [n_hidden, n_features]
    q = w / w.sum(dim=1, keepdim=True).clamp_min(1e-300)
    return torch.exp(-torch.xlogy(q, q).sum(dim=1))
