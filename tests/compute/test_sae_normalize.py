"""SAE input normalisation against references written from SAELens's formulas (issue 14 item 8).

SAELens (``sae_lens/saes/sae.py``, ``_setup_activation_normalization``, ``process_sae_in`` and
``decode``), per token x:

- ``constant_norm_rescale``: c = sqrt(d_in) / ||x||; encode reads x * c; decode returns out / c.
- ``layer_norm``: mu = mean(x), s = std(x - mu) (unbiased, torch's default); encode reads
  (x - mu) / (s + 1e-5); decode returns out * s + mu.
- ``none`` and ``expected_average_only_in`` (a training-time constant, folded into the weights
  when an SAE is saved or loaded): the identity at inference.

Then ``x - b_dec`` when ``apply_b_dec_to_input``, ``x @ W_enc + b_enc``, the activation, and
``f @ W_dec + b_dec`` before the decode-side normalisation.
"""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.tiny_sae import random_sae
from workers.compute.sae.model import NORMALIZATIONS


def _saelens_in(mode: str, x: torch.Tensor, d_in: int) -> tuple[torch.Tensor, object]:
    if mode == "constant_norm_rescale":
        coeff = math.sqrt(d_in) / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x * coeff, ("coeff", coeff)
    if mode == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        n = x.shape[-1]
        std = (centred.pow(2).sum(-1, keepdim=True) / (n - 1)).sqrt()  # Bessel's correction, as torch.std
        return centred / (std + 1e-5), ("ln", std, mu)
    return x, None


def _saelens_out(state: object, out: torch.Tensor) -> torch.Tensor:
    if state is None:
        return out
    if state[0] == "coeff":  # type: ignore[index]
        return out / state[1]  # type: ignore[index]
    _, std, mu = state  # type: ignore[misc]
    return out * std + mu


def _reference(sae: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature activations, reconstruction) computed from the tensors and SAELens's formulas."""
    cfg = sae.cfg  # type: ignore[attr-defined]
    t = sae.tensors()  # type: ignore[attr-defined]
    normed, state = _saelens_in(cfg.normalize_activations, x, cfg.d_in)
    sae_in = normed - t["b_dec"] * cfg.apply_b_dec_to_input
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if cfg.architecture == "relu":
        f = torch.relu(pre)
    elif cfg.architecture == "jumprelu":
        f = pre * (pre > t["threshold"])  # SAELens JumpReLU: pre where pre > threshold (threshold >= 0)
    else:
        top = pre.topk(cfg.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return f, _saelens_out(state, f @ t["W_dec"] + t["b_dec"])


def _inputs(d_in: int) -> torch.Tensor:
    """Tokens with an offset and a scale of their own, so each normalisation changes them."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(64, d_in, generator=g)
    return x * torch.linspace(0.1, 20, 64)[:, None] + torch.linspace(-3, 5, 64)[:, None]


@pytest.mark.parametrize("mode", NORMALIZATIONS)
@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_every_normalisation_matches_saelens(mode: str, architecture: str, apply_b_dec: bool) -> None:
    sae = random_sae(12, 40, architecture=architecture, k=5, seed=3).with_config(
        normalize_activations=mode, apply_b_dec_to_input=apply_b_dec)
    if architecture == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(40, generator=torch.Generator().manual_seed(4)) * 0.5)
    x = _inputs(12)
    want_f, want_out = _reference(sae, x)
    with torch.no_grad():
        got_f, got_out = sae.encode(x), sae(x)
    assert torch.allclose(got_f, want_f, rtol=1e-5, atol=1e-5)
    assert torch.allclose(got_out, want_out, rtol=1e-5, atol=1e-4)
    assert (want_f > 0).any()


def test_layer_norm_uses_the_unbiased_std_plus_eps() -> None:
    """The case the old code got wrong: sqrt(population variance + eps) differs from the unbiased
    std + eps by a factor sqrt(n / (n - 1)), large for a small d_in."""
    sae = random_sae(4, 8, architecture="relu", seed=1).with_config(normalize_activations="layer_norm",
                                                                      apply_b_dec_to_input=False)
    x = torch.tensor([[1.0, 2.0, 4.0, 9.0]])
    normed, _ = sae.normalize(x)
    centred = x - 4.0
    assert torch.allclose(normed, centred / (centred.pow(2).sum() / 3).sqrt().add(1e-5))
    assert not torch.allclose(normed, centred / (centred.pow(2).mean() + 1e-5).sqrt())
