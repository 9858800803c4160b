"""The L0 offset brings a ReLU and a JumpReLU SAE to a chosen L0, counted here by brute force, and
moves every threshold by the same amount (nothing else changes)."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_sae import random_sae
from workers.compute.l0_calibration import calibrate_l0, l0_offset


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_offset_hits_the_target_l0(arch: str) -> None:
    sae = random_sae(16, 64, architecture=arch, k=None, seed=4)
    x = torch.randn(4000, 16, generator=torch.Generator().manual_seed(1))
    for target in (3.0, 10.0):
        moved, s = calibrate_l0(sae, x, target)
        f = moved.encode(x)
        l0 = sum(int((f[t] > 0).sum()) for t in range(len(x))) / len(x)  # brute force
        assert l0 == pytest.approx(target, abs=0.01)
        held_out = moved.encode(torch.randn(4000, 16, generator=torch.Generator().manual_seed(2)))
        assert float((held_out > 0).sum(dim=1).double().mean()) == pytest.approx(target, rel=0.1)
        if arch == "relu":
            assert torch.allclose(moved.b_enc, sae.b_enc - s)
        else:
            assert torch.allclose(moved.threshold, (sae.threshold + s).clamp_min(0))
            assert torch.equal(moved.b_enc, sae.b_enc)
        assert torch.equal(moved.W_enc, sae.W_enc) and torch.equal(moved.W_dec, sae.W_dec)


def test_refuses_topk_and_impossible_targets() -> None:
    x = torch.randn(10, 16)
    with pytest.raises(ValueError, match="only"):
        l0_offset(random_sae(16, 8, seed=0), x, 2.0)
    with pytest.raises(ValueError, match="target L0"):
        l0_offset(random_sae(16, 8, architecture="relu", k=None, seed=0), x, 8.0)
