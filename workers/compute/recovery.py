"""How well a dictionary (an SAE's latents) recovers known true features.

Definitions follow SAELens's synthetic-data evaluation (SynthSAEBench), so numbers compare:

- ``mcc``: one-to-one matching of decoder rows to true directions by the Hungarian algorithm on
  |cosine|, mean |cosine| of the matched pairs (over min(latents, features) pairs).
- ``f1`` / ``precision`` / ``recall``: each latent, as a detector of the true feature its decoder
  is closest to (|cosine|), scored on firing (> 0) against presence; mean over all latents (a dead
  latent scores 0).
- ``mmcs``: mean over true features of the largest cosine with any decoder row (Sharkey et al.).

And, per true feature: ``feature_f1`` (mean over features of the F1 of the latent matched to it),
``split_features`` (features covered by two or more latents, each firing mostly when the feature is
present: ``SPLIT_PRECISION``, and each catching at least ``SPLIT_RECALL`` of it),
``absorbing_latents`` (live latents whose decoder points at two or more true features at once,
cosine >= ``ABSORB_COS`` each, and that fire mostly when all of them are present: a child that took
its parent's direction in), dead and dense fractions, FVU and L0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from workers.compute.synthetic import SyntheticSet

DENSE = 0.1
"""A latent firing on more than this fraction of inputs counts as dense (as SAEBench)."""
SPLIT_PRECISION, SPLIT_RECALL = 0.8, 0.05
ABSORB_COS, ABSORB_PRECISION = 0.3, 0.8
MATCH_COS = 0.5
"""Latents whose decoder is closer than this to their best feature are no candidate for splits."""

Encode = Callable[[torch.Tensor], torch.Tensor]


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosines(W_dec: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[d_sae, m] x [n, m] -> [d_sae, n] signed cosines."""
    return unit_rows(W_dec.float()) @ unit_rows(directions.float()).T


def mmcs(cos: torch.Tensor) -> float:
    return float(cos.max(dim=0).values.mean())


def hungarian(cos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching (latents, features) with the largest total |cosine|."""
    return linear_sum_assignment(cos.abs().double().numpy(), maximize=True)


def mcc(cos: torch.Tensor) -> float:
    rows, cols = hungarian(cos)
    return float(cos.abs()[rows, cols].mean())


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> tuple[torch.Tensor, ...]:
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return precision, recall, f1


class _Counts:
    """Streaming counts over chunks of (latent activations, true feature activations)."""

    def __init__(self, cos: torch.Tensor, matched: torch.Tensor) -> None:
        d, n = cos.shape
        self.best = cos.abs().argmax(1)  # [d]
        self.matched = matched  # [n] latent matched to each feature (-1: none)
        self.tp = torch.zeros(d, dtype=torch.float64)
        self.fires = torch.zeros(d, dtype=torch.float64)
        self.present = torch.zeros(n, dtype=torch.float64)
        self.matched_tp = torch.zeros(n, dtype=torch.float64)
        sets = [torch.nonzero(row >= ABSORB_COS).flatten() for row in cos]
        self.absorb_sets = [(latent, members) for latent, members in enumerate(sets) if len(members) >= 2]
        self.absorb_tp = torch.zeros(d, dtype=torch.float64)
        self.samples, self.active, self.err, self.sum_x, self.sum_x2 = 0, 0.0, 0.0, 0.0, 0.0
        self.sum_vec: torch.Tensor | None = None

    def add(self, latents: torch.Tensor, features: torch.Tensor) -> None:
        fires, present = latents > 0, features > 0
        self.samples += len(latents)
        self.active += float(fires.sum())
        self.fires += fires.sum(0)
        self.present += present.sum(0)
        self.tp += (fires & present[:, self.best]).sum(0)
        has = self.matched >= 0
        idx = self.matched.clamp_min(0)
        self.matched_tp += torch.where(has, (fires[:, idx] & present).sum(0), 0)
        for latent, members in self.absorb_sets:
            self.absorb_tp[latent] += float((fires[:, latent] & present[:, members].all(1)).sum())

    def add_reconstruction(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        xd = x.double()
        self.err += float((xd - x_hat.double()).pow(2).sum())
        self.sum_x2 += float(xd.pow(2).sum())
        total = xd.sum(0)
        self.sum_vec = total if self.sum_vec is None else self.sum_vec + total


@torch.no_grad()
def evaluate(encode: Encode, W_dec: torch.Tensor, truth: SyntheticSet, *, n_samples: int = 16_384, seed: int = 1,
             decode: Callable[[torch.Tensor], torch.Tensor] | None = None, chunk: int = 4096) -> dict[str, Any]:
    """Every recovery metric of a dictionary on ``n_samples`` fresh draws of ``truth``."""
    cos = cosines(W_dec, truth.directions)
    rows, cols = hungarian(cos)
    matched = torch.full((truth.n_features,), -1, dtype=torch.long)
    matched[torch.as_tensor(cols)] = torch.as_tensor(rows)
    counts = _Counts(cos, matched)
    generator = torch.Generator().manual_seed(seed)
    done = 0
    while done < n_samples:
        features, x = truth.draw(min(chunk, n_samples - done), generator)
        latents = encode(x)
        counts.add(latents, features)
        if decode is not None:
            counts.add_reconstruction(x, decode(latents))
        done += len(x)
    return _summary(counts, cos, rows, cols, truth)


def _summary(c: _Counts, cos: torch.Tensor, rows: np.ndarray, cols: np.ndarray, truth: SyntheticSet) -> dict[str, Any]:
    fp = c.fires - c.tp
    fn = c.present[c.best] - c.tp
    precision, recall, f1 = _f1(c.tp, fp, fn)
    m_tp = c.matched_tp
    m_fires = torch.where(c.matched >= 0, c.fires[c.matched.clamp_min(0)], 0.0)
    _, _, feature_f1 = _f1(m_tp, m_fires - m_tp, c.present - m_tp)
    rate = c.fires / c.samples
    absorbing = _absorbing(c)
    out: dict[str, Any] = {
        "mcc": float(cos.abs()[rows, cols].mean()), "mmcs": mmcs(cos),
        "f1": float(f1.mean()), "precision": float(precision.mean()), "recall": float(recall.mean()),
        "feature_f1": float(feature_f1.mean()),
        "split_features": _splits(c, cos, precision, recall, absorbing),
        "absorbing_latents": len(absorbing),
        "dead_fraction": float((c.fires == 0).double().mean()), "dense_fraction": float((rate > DENSE).double().mean()),
        "l0": c.active / c.samples, "true_l0": float(c.present.sum() / c.samples),
        "samples": c.samples, "n_features": truth.n_features, "d_sae": int(cos.shape[0]),
    }
    if c.sum_vec is not None:
        variance = c.sum_x2 - float(c.sum_vec.pow(2).sum()) / c.samples
        out["fvu"] = c.err / max(variance, 1e-12)
    return out


def _splits(c: _Counts, cos: torch.Tensor, precision: torch.Tensor, recall: torch.Tensor,
            absorbing: list[int]) -> int:
    """True features with >= 2 latents that each detect it (precise, with some recall, decoder near
    it), absorbing latents left out (they detect a conjunction, not a part of one feature)."""
    near = cos.abs().max(1).values >= MATCH_COS
    near[absorbing] = False
    good = near & (precision >= SPLIT_PRECISION) & (recall >= SPLIT_RECALL)
    per_feature = torch.bincount(c.best[good], minlength=cos.shape[1])
    return int((per_feature >= 2).sum())


def _absorbing(c: _Counts) -> list[int]:
    share = c.absorb_tp / c.fires.clamp_min(1)
    return [latent for latent, _ in c.absorb_sets if c.fires[latent] > 0 and share[latent] >= ABSORB_PRECISION]


def sae_evaluate(sae: Any, truth: SyntheticSet, *, n_samples: int = 16_384, seed: int = 1) -> dict[str, Any]:
    """``evaluate`` for a ``SparseAutoencoder`` (encode, decode in its own scale)."""
    return evaluate(sae.encode, sae.W_dec.detach().cpu(), truth, n_samples=n_samples, seed=seed,
                    decode=lambda f: sae.decode(f))
