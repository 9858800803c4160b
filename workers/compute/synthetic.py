"""Synthetic activations with known features: the ground truth SAEs and scores are checked against.

Every generator returns a :class:`SyntheticSet`: the true feature directions, what it promises
(``info``: presence rates, correlations, parents, the planted cause of polysemanticity) and a
seeded ``draw`` that gives (true feature activations [N, n], activations [N, m]) for any sample
size. The same name, parameters and seed give the same set on every machine (torch's CPU
generator), so a registered set stores its parameters, never its tensors.

Kinds (``GENERATORS``):

- ``superposition``: n sparse features in m < n dims along random unit directions, pushed apart
  until no two have |cos| above ``interference``; firing rates uniform or Zipfian with a chosen
  expected L0.
- ``toy``: the hidden activations of a trained toy model of superposition (``toy.py``).
- ``correlated``: features in pairs whose presences have a chosen correlation (negative:
  anti-correlated, -p/(1-p): mutually exclusive).
- ``hierarchical``: parents that always fire with their children (the setting of absorption).
- ``rotated``: n <= m orthonormal features in a random basis, not aligned with the neurons.
- ``circle`` / ``bands``: one variable represented non-linearly: a value among K points on a
  circle, or a magnitude on an arc; its "features" are the K points / bands.
- ``compositional``: every input is one feature of group A plus one of group B.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MAGNITUDE = (0.5, 1.5)
"""A present feature's magnitude is uniform on this range (mean 1, so L0 and energy agree)."""
SHARE_COVERED = 0.9
"""A neuron's true feature set: its largest variance shares adding up to this fraction."""
MAX_FEATURES, MAX_DIMS = 65_536, 8192

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SyntheticSet:
    """Known features and a seeded sampler of activations built from them."""

    kind: str
    directions: torch.Tensor
    """[n, m] unit-norm direction of each true feature (for non-linear kinds: where it peaks)."""
    draw: Draw
    """(N, generator) -> (true feature activations [N, n], >0 where present; activations [N, m])."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the generator promises: ``p`` [n] presence rates, ``cause``, and kind-specific facts."""

    @property
    def n_features(self) -> int:
        return int(self.directions.shape[0])

    @property
    def d(self) -> int:
        return int(self.directions.shape[1])

    def sample(self, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.draw(n_samples, torch.Generator().manual_seed(seed))

    def chunks(self, chunk: int, seed: int, limit: int | None = None) -> Any:
        """An endless (or ``limit``-long) stream of activation chunks [chunk, m] for training."""
        generator = torch.Generator().manual_seed(seed)
        count = 0
        while limit is None or count < limit:
            yield self.draw(chunk, generator)[1]
            count += 1

    def true_l0(self) -> float:
        return float(torch.as_tensor(self.info["p"]).sum())


def firing_probabilities(n: int, l0: float, zipf: float = 0.0) -> torch.Tensor:
    """[n] presence rates summing to ``l0``: equal, or proportional to (i + 1)^-zipf (capped at 1)."""
    if not 0 < l0 <= n:
        raise ValueError(f"expected L0 must be in (0, {n}] (got {l0})")
    weights = torch.arange(1, n + 1, dtype=torch.float64) ** -zipf
    p = weights / weights.sum() * l0
    for _ in range(50):  # redistribute the mass above 1 over the uncapped features
        over = p > 1
        if not over.any():
            break
        excess = float((p[over] - 1).sum())
        p[over] = 1.0
        free = ~over & (p < 1)
        p[free] += excess * p[free] / p[free].sum()
    return p.float()


def random_directions(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    d = torch.randn(n, m, generator=generator)
    return d / d.norm(dim=1, keepdim=True)


def near_orthogonal(n: int, m: int, interference: float | None, generator: torch.Generator,
                    max_iters: int = 400) -> torch.Tensor:
    """[n, m] unit directions with every pairwise |cos| <= ``interference`` (None: plain random).

    Gradient steps on the squared excess of each pair's |cos| over the bound, renormalizing after
    each; raises if the bound is not reached (below the Welch bound it cannot be)."""
    d = random_directions(n, m, generator)
    if interference is None:
        return d
    for _ in range(max_iters):
        cos = d @ d.T
        cos.fill_diagonal_(0)
        excess = torch.sign(cos) * (cos.abs() - interference).clamp_min(0)
        if float(excess.abs().max()) <= 1e-4:
            return d
        d = d - 0.5 * excess @ d
        d = d / d.norm(dim=1, keepdim=True)
    raise ValueError(f"could not place {n} directions in {m} dims with |cos| <= {interference}")


def _magnitudes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    lo, hi = MAGNITUDE
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def _linear(p: torch.Tensor, directions: torch.Tensor) -> Draw:
    def draw(n_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        present = torch.rand(n_samples, len(p), generator=generator) < p
        features = present * _magnitudes((n_samples, len(p)), generator)
        return features, features @ directions
    return draw


def superposition(*, n: int, m: int, l0: float, seed: int, interference: float | None = None,
                  zipf: float = 0.0) -> SyntheticSet:
    """n independent sparse features along near-orthogonal directions in m dims."""
    _check(n, m)
    generator = torch.Generator().manual_seed(seed)
    directions = near_orthogonal(n, m, interference, generator)
    p = firing_probabilities(n, l0, zipf)
    cos = (directions @ directions.T).fill_diagonal_(0).abs()
    return SyntheticSet("superposition", directions, _linear(p, directions),
                        {"p": p.tolist(), "cause": "superposition" if n > m else "rotation",
                         "max_interference": float(cos.max()), "interference_bound": interference})


def toy_set(*, W: torch.Tensor, p: float, kind: str, seed: int) -> SyntheticSet:
    """Hidden activations of a trained toy model (W [n, m]): x W, through a ReLU for hidden_relu.

    Features are uniform on [0, 1) with probability p, as the toy model was trained on."""
    n, _ = W.shape
    norms = W.norm(dim=1)
    directions = W / norms.clamp_min(1e-12)[:, None]

    def draw(n_samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(n_samples, n, generator=generator)
        features = ((u - (1 - p)) / p).clamp_min(0)
        pre = features @ W
        return features, torch.relu(pre) if kind == "hidden_relu" else pre
    return SyntheticSet("toy", directions, draw, {"p": [p] * n, "cause": "superposition", "toy_kind": kind,
                                                  "feature_norms": norms.tolist(), "seed": seed})


def correlated(*, n_pairs: int, m: int, p: float, rho: float, seed: int) -> SyntheticSet:
    """Features 2i and 2i+1 each present with probability p, their presences correlated by rho."""
    both = p * p + rho * p * (1 - p)
    if not (0 <= both <= p and 0 < p < 1):
        raise ValueError(f"no pair of rate {p} has presence correlation {rho}")
    _check(2 * n_pairs, m)
    generator = torch.Generator().manual_seed(seed)
    directions = near_orthogonal(2 * n_pairs, m, None, generator)
    # One draw per pair picks {both, first only, second only, neither}.
    edges = torch.tensor([both, p, 2 * p - both])

    def draw(n_samples: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(n_samples, n_pairs, generator=g)
        first, second = u < edges[1], (u < edges[0]) | ((u >= edges[1]) & (u < edges[2]))
        present = torch.stack([first, second], dim=2).reshape(n_samples, 2 * n_pairs)
        features = present * _magnitudes((n_samples, 2 * n_pairs), g)
        return features, features @ directions
    return SyntheticSet("correlated", directions, draw,
                        {"p": [p] * (2 * n_pairs), "rho": rho, "pairs": [[2 * i, 2 * i + 1] for i in range(n_pairs)],
                         "cause": "superposition" if 2 * n_pairs > m else "rotation"})


def hierarchical(*, n_parents: int, children: int, m: int, p_parent: float, p_child: float,
                 seed: int) -> SyntheticSet:
    """Parents present with rate p_parent; each child only with its parent (rate p_child given it).

    Features 0..n_parents-1 are parents; parent i's children follow in blocks of ``children``."""
    n = n_parents * (1 + children)
    _check(n, m)
    generator = torch.Generator().manual_seed(seed)
    directions = near_orthogonal(n, m, None, generator)
    parent_of = [-1] * n_parents + [i for i in range(n_parents) for _ in range(children)]
    parent_index = torch.tensor(parent_of[n_parents:])

    def draw(n_samples: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        parents = torch.rand(n_samples, n_parents, generator=g) < p_parent
        kids = (torch.rand(n_samples, n_parents * children, generator=g) < p_child) & parents[:, parent_index]
        features = torch.cat([parents, kids], dim=1) * _magnitudes((n_samples, n), g)
        return features, features @ directions
    p = [p_parent] * n_parents + [p_parent * p_child] * (n_parents * children)
    return SyntheticSet("hierarchical", directions, draw,
                        {"p": p, "parent_of": parent_of, "cause": "superposition" if n > m else "rotation"})


def rotated(*, n: int, m: int, p: float, seed: int) -> SyntheticSet:
    """n <= m orthonormal features in a random rotation of the neuron basis (no superposition)."""
    if not 1 <= n <= m <= MAX_DIMS:
        raise ValueError(f"a rotated set needs 1 <= n <= m (got n={n}, m={m})")
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, m, generator=generator))
    directions = q[:, :n].T.contiguous()
    p_all = torch.full((n,), p)
    return SyntheticSet("rotated", directions, _linear(p_all, directions), {"p": p_all.tolist(), "cause": "rotation"})


def nonlinear(*, shape: str, values: int, m: int, p: float, seed: int) -> SyntheticSet:
    """One variable, present with rate p, represented non-linearly in a random plane of m dims.

    ``circle``: it takes one of ``values`` points on a circle (like days of the week); ``bands``:
    a magnitude v uniform on [0, 1) drawn on the quarter arc at angle v * pi / 2, its features
    the ``values`` equal bands of v. Either way the features never co-occur and span 2 dims."""
    if shape not in {"circle", "bands"} or values < 3 or m < 2:
        raise ValueError("shape must be circle or bands, with at least 3 values and 2 dims")
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, 2, generator=generator))
    plane = q.T.contiguous()  # [2, m]
    span = 2 * math.pi if shape == "circle" else math.pi / 2
    centres = (torch.arange(values) + (0 if shape == "circle" else 0.5)) / values * span
    directions = torch.stack([centres.cos(), centres.sin()], dim=1) @ plane

    def draw(n_samples: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        present = torch.rand(n_samples, generator=g) < p
        if shape == "circle":
            which = torch.randint(values, (n_samples,), generator=g)
            angle, size = centres[which], _magnitudes((n_samples,), g)
        else:
            v = torch.rand(n_samples, generator=g)
            which, angle, size = (v * values).long().clamp_max(values - 1), v * span, torch.ones(n_samples)
        features = torch.zeros(n_samples, values)
        features[torch.arange(n_samples), which] = size
        features *= present[:, None]
        acts = (present * size)[:, None] * (torch.stack([angle.cos(), angle.sin()], dim=1) @ plane)
        return features, acts
    return SyntheticSet(shape, directions, draw, {"p": [p / values] * values, "cause": "nonlinear", "plane": plane.tolist()})


def compositional(*, n_a: int, n_b: int, m: int, seed: int) -> SyntheticSet:
    """Every input is one feature of group A (0..n_a-1) plus one of group B, each uniformly chosen:
    n_a x n_b combinations built from n_a + n_b <= m orthonormal components."""
    if n_a < 2 or n_b < 2 or n_a + n_b > m:
        raise ValueError(f"compositional sets need 2 <= n_a, n_b and n_a + n_b <= m (got {n_a}, {n_b}, {m})")
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(m, n_a + n_b, generator=generator))
    directions = q.T.contiguous()

    def draw(n_samples: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(n_samples)
        features = torch.zeros(n_samples, n_a + n_b)
        features[rows, torch.randint(n_a, (n_samples,), generator=g)] = _magnitudes((n_samples,), g)
        features[rows, n_a + torch.randint(n_b, (n_samples,), generator=g)] = _magnitudes((n_samples,), g)
        return features, features @ directions
    p = [1 / n_a] * n_a + [1 / n_b] * n_b
    return SyntheticSet("compositional", directions, draw, {"p": p, "groups": [n_a, n_b], "cause": "compositional"})


def _check(n: int, m: int) -> None:
    if not (1 <= n <= MAX_FEATURES and 1 <= m <= MAX_DIMS):
        raise ValueError(f"need 1 <= n <= {MAX_FEATURES} features and 1 <= m <= {MAX_DIMS} dims (got {n}, {m})")


GENERATORS: dict[str, Callable[..., SyntheticSet]] = {
    "superposition": superposition, "correlated": correlated, "hierarchical": hierarchical, "rotated": rotated,
    "compositional": compositional,
    "circle": lambda **kw: nonlinear(shape="circle", **kw), "bands": lambda **kw: nonlinear(shape="bands", **kw),
}


def generate(kind: str, params: dict[str, Any]) -> SyntheticSet:
    """The named generator with keyword parameters (what a registered set stores)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known: {', '.join(GENERATORS)}")
    try:
        return GENERATORS[kind](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {kind}: {exc}") from None


def neuron_truth(features: torch.Tensor, directions: torch.Tensor,
                 covered: float = SHARE_COVERED) -> tuple[list[list[tuple[int, float]]], torch.Tensor]:
    """Each neuron's true features from a sample: feature f's share of neuron k's energy is
    E[a_f^2] D[f, k]^2 / sum_g E[a_g^2] D[g, k]^2; the set is the largest shares covering ``covered``,
    the count the effective number exp(entropy) of all shares. ([m] lists, [m] counts)."""
    return neuron_truth_from_energy(features.pow(2).mean(0), directions, covered)


def neuron_truth_from_energy(mean_square: torch.Tensor, directions: torch.Tensor,
                             covered: float = SHARE_COVERED) -> tuple[list[list[tuple[int, float]]], torch.Tensor]:
    """``neuron_truth`` from each feature's E[a_f^2] [n] (accumulated over chunks by the caller)."""
    energy = mean_square[:, None] * directions.pow(2)  # [n, m]
    shares = (energy / energy.sum(0, keepdim=True).clamp_min(1e-30)).T  # [m, n]
    effective = torch.exp(-torch.xlogy(shares, shares).sum(1))
    sets = []
    for row in shares:
        values, order = row.sort(descending=True)
        keep = int((values.cumsum(0) < covered).sum()) + 1
        sets.append([(int(f), round(float(v), 4)) for f, v in zip(order[:keep], values[:keep], strict=True)])
    return sets, effective
