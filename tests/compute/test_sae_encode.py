"""SAE encoding outside autograd writes over its own temporaries (no fresh [tokens, d_sae] buffer
per harvest batch): the latents must equal the autograd path's and a hand-written reference bit
for bit, and encoding under autograd must still give gradients."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_sae import random_sae
from workers.compute.sae.model import SparseAutoencoder


def _by_hand(sae: SparseAutoencoder, x: torch.Tensor, arch: str) -> torch.Tensor:
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "relu":
        return pre.clamp(min=0)
    if arch == "jumprelu":
        return torch.where(pre > sae.threshold, pre.clamp(min=0), 0.0)
    top = pre.topk(8, dim=-1)
    out = torch.zeros_like(pre)
    for row in range(pre.shape[0]):
        for value, index in zip(top.values[row].tolist(), top.indices[row].tolist(), strict=True):
            out[row, index] = max(value, 0.0)
    return out


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_encode_in_place_equals_the_autograd_path_and_the_reference(arch: str) -> None:
    sae = random_sae(24, 96, architecture=arch, k=8, seed=3, hook_name="blocks.1.hook_resid_post")
    x = torch.randn(40, 24, generator=torch.Generator().manual_seed(4)) * 2
    with torch.no_grad():
        want = _by_hand(sae, x, arch)
        assert 0 < int((want != 0).sum()) < want.numel()
    with torch.inference_mode():
        fast = sae.encode(x)
    W_enc = sae.W_enc.detach().clone().requires_grad_(True)
    sae.W_enc = torch.nn.Parameter(W_enc)
    slow = sae.encode(x)
    assert slow.requires_grad
    slow.sum().backward()
    assert sae.W_enc.grad is not None and bool(sae.W_enc.grad.abs().sum() > 0)
    assert torch.equal(fast, want) and torch.equal(slow.detach(), want)
