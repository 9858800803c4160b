"""Setting a ReLU or JumpReLU SAE's sparsity after training: their L0 follows from a coefficient, so
to compare them with the TopK family at one L0 (as SynthSAEBench compares at L0 25), every latent's
firing threshold is moved by one shared offset s, found by bisection on a calibration sample so the
mean L0 equals the target. ReLU: b_enc - s (a latent fires when its pre-activation exceeds s, and its
value drops by s); JumpReLU: threshold max(theta + s, 0) (values unchanged)."""

from __future__ import annotations

import torch

from workers.compute.sae.model import SparseAutoencoder

CALIBRATED = ("relu", "jumprelu")
ITERATIONS = 40


def _l0(pre: torch.Tensor, theta: torch.Tensor, s: float) -> float:
    return float((pre > (theta + s).clamp_min(0.0)).sum(dim=1).double().mean())


@torch.no_grad()
def l0_offset(sae: SparseAutoencoder, x: torch.Tensor, target: float) -> float:
    """The shared threshold offset s giving mean L0 ``target`` on ``x`` [n, d_in] (closest reachable)."""
    if sae.cfg.architecture not in CALIBRATED:
        raise ValueError(f"only {CALIBRATED} SAEs take an L0 offset (got {sae.cfg.architecture})")
    if not 0 < target < sae.cfg.d_sae:
        raise ValueError(f"target L0 must be in (0, {sae.cfg.d_sae})")
    normalized, _ = sae.normalize(x.float())
    pre = sae.pre_acts(normalized)  # [n, d_sae]
    theta = sae.threshold.detach() if sae.cfg.architecture == "jumprelu" else torch.zeros(sae.cfg.d_sae)
    lo, hi = -float(theta.max()) - 1.0, float(pre.max()) + 1.0  # L0(lo) = all that are positive, L0(hi) = 0
    for _ in range(ITERATIONS):  # L0 falls as s rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _l0(pre, theta, mid) > target else (lo, mid)
    return hi if abs(_l0(pre, theta, hi) - target) <= abs(_l0(pre, theta, lo) - target) else lo


def with_l0_offset(sae: SparseAutoencoder, s: float) -> SparseAutoencoder:
    """A copy of ``sae`` whose thresholds are moved by ``s``."""
    tensors = sae.tensors()
    if sae.cfg.architecture == "relu":
        tensors["b_enc"] = tensors["b_enc"] - s
    else:
        tensors["threshold"] = (tensors["threshold"] + s).clamp_min(0.0)
    return SparseAutoencoder(sae.cfg, tensors)


def calibrate_l0(sae: SparseAutoencoder, x: torch.Tensor, target: float) -> tuple[SparseAutoencoder, float]:
    """(the SAE moved to mean L0 ``target`` on ``x``, the offset used)."""
    s = l0_offset(sae, x, target)
    return with_l0_offset(sae, s), s
