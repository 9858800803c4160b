"""Why is a unit polysemantic? Superposition, rotation, a non-linear feature, or a compositional code.

Reads what a dictionary says about a layer: its latents' activations F [N, d] on a sample and its
decoder W_dec [d, m] (an SAE's, or the true features of a synthetic set). A unit (neuron k) is
polysemantic when several features carry its energy: feature f's share is
E[F_f^2] W_dec[f, k]^2 over the sum of all, and the unit's features are the largest shares
covering ``COVERED`` (at most ``MAX_UNIT_FEATURES``). Then, in order:

- **non-linear**: three or more features in a plane (participation ratio of the unit-normalised
  rows <= ``FLAT_DIMS``) that include a pair never firing together (co-firing at most
  ``EXCLUSIVE_RATIO`` of what independence predicts, tested where that prediction is >=
  ``MIN_EXPECTED``): one variable on a curve (a circle, magnitude bands), one point of it at a
  time. More than two directions in two dimensions cannot be independent linear features without
  large interference, and independent ones would co-fire. A learned dictionary tiles the curve with
  a few latents, neighbours co-firing where it interpolates, and a unit may carry only two of them:
  when the unit's features span a plane, every live latent lying in that plane (at least
  ``IN_PLANE`` of its squared norm) joins them, so the curve is seen whole;
- **compositional**: at least ``GROUPED`` of the tested pairs exclusive (alternatives within a
  group) and some independent (ratio within ``INDEPENDENT``: parts from different groups): a code
  built from parts (the layer's L0 is reported too: constant for a pure code);
- **superposition**: the layer holds more live features than dimensions (their decoders then
  cannot be orthogonal: the evidence is the interference);
- **rotation**: no more live features than dimensions, nearly orthogonal, just not aligned with
  the neurons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

CAUSES = ("superposition", "rotation", "nonlinear", "compositional")
COVERED, MAX_UNIT_FEATURES = 0.9, 16
MIN_FIRES = 5
"""A latent firing on fewer inputs of the sample is not live."""
MIN_EXPECTED, EXCLUSIVE_RATIO, INDEPENDENT = 5.0, 0.1, (0.5, 2.0)
FLAT_DIMS, IN_PLANE = 2.5, 0.9
GROUPED = 0.25


@dataclass(frozen=True)
class Layer:
    """What is shared by every unit of the layer."""

    live: torch.Tensor
    """[d] bool: the latents that fire at least MIN_FIRES times."""
    n_live: int
    dims: int
    interference: float
    """Mean over live latents of the largest |cos| with another live latent."""
    l0_mean: float
    l0_cv: float
    """Coefficient of variation of the live L0 over active inputs."""


@dataclass(frozen=True)
class Diagnosis:
    unit: int
    cause: str
    """monosemantic, superposition, rotation, nonlinear or compositional."""
    features: list[int]
    evidence: dict[str, Any] = field(default_factory=dict)


def layer_facts(latents: torch.Tensor, W_dec: torch.Tensor) -> Layer:
    fires = latents > 0
    live = fires.sum(0) >= MIN_FIRES
    rows = W_dec[live].float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (rows @ rows.T).abs().fill_diagonal_(0) if len(rows) > 1 else torch.zeros(1, 1)
    l0 = fires[:, live].sum(1).float()
    active = l0[l0 > 0]
    mean = float(active.mean()) if len(active) else 0.0
    cv = float(active.std() / active.mean()) if len(active) > 1 and mean > 0 else 0.0
    return Layer(live, int(live.sum()), int(W_dec.shape[1]), float(cos.max(1).values.mean()), mean, cv)


def unit_features(latents: torch.Tensor, W_dec: torch.Tensor, live: torch.Tensor) -> list[list[int]]:
    """Each unit's features: largest energy shares covering COVERED (live latents only)."""
    energy = latents.pow(2).mean(0)[:, None] * W_dec.pow(2) * live[:, None]  # [d, m]
    shares = (energy / energy.sum(0, keepdim=True).clamp_min(1e-30)).T  # [m, d]
    out = []
    for row in shares:
        values, order = row.sort(descending=True)
        keep = min(int((values.cumsum(0) < COVERED).sum()) + 1, MAX_UNIT_FEATURES)
        out.append([int(f) for f, v in zip(order[:keep], values[:keep], strict=True) if v > 0])
    return out


def _pair_ratios(fires: torch.Tensor, members: list[int]) -> list[float]:
    """Observed / expected co-firing for every pair of members whose expectation is >= MIN_EXPECTED."""
    sub = fires[:, members].float()
    n = len(sub)
    rate = sub.mean(0)
    both = sub.T @ sub  # [k, k] co-firing counts
    ratios = []
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            expected = n * float(rate[i] * rate[j])
            if expected >= MIN_EXPECTED:
                ratios.append(float(both[i, j]) / expected)
    return ratios


def _participation(W_dec: torch.Tensor, members: list[int]) -> float:
    rows = W_dec[members].float()
    rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    s2 = torch.linalg.svdvals(rows).pow(2)
    return float(s2.sum() ** 2 / s2.pow(2).sum().clamp_min(1e-30))


def _plane_group(members: list[int], W_dec: torch.Tensor, live: torch.Tensor) -> list[int]:
    """The members plus every other live latent lying in their plane (their top two right singular
    vectors hold at least IN_PLANE of its squared norm)."""
    rows = W_dec[members].float()
    plane = torch.linalg.svd(rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12), full_matrices=False).Vh[:2]
    inside_already = set(members)
    others = [f for f in live.nonzero().flatten().tolist() if f not in inside_already]
    if not others:
        return list(members)
    cand = W_dec[others].float()
    inside = (cand @ plane.T).pow(2).sum(1) / cand.pow(2).sum(1).clamp_min(1e-30)
    return list(members) + [f for f, v in zip(others, inside.tolist(), strict=True) if v >= IN_PLANE]


def diagnose_unit(unit: int, members: list[int], fires: torch.Tensor, W_dec: torch.Tensor, layer: Layer) -> Diagnosis:
    if len(members) <= 1:
        return Diagnosis(unit, "monosemantic", members, {"features": len(members)})
    ratios = _pair_ratios(fires, members)
    exclusive = [r <= EXCLUSIVE_RATIO for r in ratios]
    independent = [INDEPENDENT[0] <= r <= INDEPENDENT[1] for r in ratios]
    rank = _participation(W_dec, members)
    evidence: dict[str, Any] = {
        "features": len(members), "live_features": layer.n_live, "dims": layer.dims,
        "features_per_dim": round(layer.n_live / max(layer.dims, 1), 3), "interference": round(layer.interference, 3),
        "pairs_tested": len(ratios), "exclusive_pairs": sum(exclusive), "independent_pairs": sum(independent),
        "effective_rank": round(rank, 2), "l0_mean": round(layer.l0_mean, 2), "l0_cv": round(layer.l0_cv, 3)}
    if rank <= FLAT_DIMS:
        group = _plane_group(members, W_dec, layer.live)
        plane_exclusive = sum(r <= EXCLUSIVE_RATIO for r in _pair_ratios(fires, group))
        evidence.update({"plane_features": len(group), "plane_exclusive_pairs": plane_exclusive})
        if len(group) >= 3 and plane_exclusive and _participation(W_dec, group) <= FLAT_DIMS:
            return Diagnosis(unit, "nonlinear", group, evidence)
    if ratios and sum(exclusive) >= GROUPED * len(ratios) and any(independent):
        cause = "compositional"
    elif layer.n_live > layer.dims:
        cause = "superposition"
    else:
        cause = "rotation"
    return Diagnosis(unit, cause, members, evidence)


@torch.no_grad()
def diagnose(latents: torch.Tensor, W_dec: torch.Tensor) -> list[Diagnosis]:
    """One diagnosis per unit (dimension of W_dec's rows) from a sample of latent activations."""
    layer = layer_facts(latents, W_dec)
    fires = latents > 0
    return [diagnose_unit(k, members, fires, W_dec, layer)
            for k, members in enumerate(unit_features(latents, W_dec, layer.live))]


def confusion(truth: list[str], predicted: list[str]) -> dict[str, dict[str, int]]:
    """Counts of predicted causes for each true cause."""
    table: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, predicted, strict=True):
        row = table.setdefault(t, {})
        row[p] = row.get(p, 0) + 1
    return table


def summary(found: list[Diagnosis], planted: str | None) -> dict[str, Any]:
    """Counts of each cause named over the units, and the share of all units named ``planted``
    (None without a planted cause)."""
    causes: dict[str, int] = {}
    for d in found:
        causes[d.cause] = causes.get(d.cause, 0) + 1
    poly = [d for d in found if d.cause != "monosemantic"]
    right = sum(d.cause == planted for d in found)
    accuracy = round(right / len(found), 4) if planted and found else None
    return {"planted": planted, "causes": causes, "polysemantic": len(poly), "accuracy": accuracy}
