"""BatchTopK, JumpReLU and Matryoshka training: the pieces against hand-written references, and
each recovering planted features at the true L0."""

from __future__ import annotations

import pytest
import torch

from workers.compute import recovery, synthetic, toy
from workers.compute.sae import sparsity
from workers.compute.sae.train import TrainConfig, train


def test_batch_topk_keeps_the_batchs_largest_values() -> None:
    pre = torch.tensor([[3.0, -1.0, 0.5], [2.0, 2.5, 0.1]])
    f, smallest = sparsity.batch_topk(pre, k=2)  # 4 of 6 kept: 3, 2.5, 2, 0.5
    assert torch.equal(f, torch.tensor([[3.0, 0.0, 0.5], [2.0, 2.5, 0.0]]))
    assert float(smallest) == 0.5


def test_jumprelu_straight_through_gradients_match_the_papers_formulas() -> None:
    pre = torch.tensor([[0.50, 0.97, 1.20], [1.04, 0.10, 2.00]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.1
    f, l0 = sparsity.jumprelu(pre, theta, eps)
    (f.sum() + 3 * l0.sum()).backward()
    assert torch.equal(f.detach(), torch.tensor([[0.0, 0.0, 1.2], [1.04, 0.0, 2.0]]))
    # by hand: inside the kernel (|z - theta| < eps/2) are (0, 1): z = 0.97 and (1, 0): z = 1.04
    # d/dtheta: -(theta/eps) per such entry for f, -(1/eps) * 3 for the L0 term.
    per_entry = -(1.0 / eps) - 3 / eps
    assert torch.allclose(theta.grad, torch.tensor([per_entry, per_entry, 0.0]))
    assert torch.equal(pre.grad, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))


def test_matryoshka_prefix_reconstructions() -> None:
    g = torch.Generator().manual_seed(0)
    f, W, b = torch.rand(5, 8, generator=g), torch.randn(8, 3, generator=g), torch.randn(3, generator=g)
    outs = sparsity.matryoshka_reconstructions(f, W, b, [2, 4, 8])
    for out, size in zip(outs, [2, 4, 8], strict=True):
        assert torch.allclose(out, b + f[:, :size] @ W[:size], atol=1e-5)
    assert sparsity.matryoshka_prefixes(64) == [4, 8, 16, 32, 64]
    with pytest.raises(ValueError):
        TrainConfig(architecture="matryoshka", d_sae=16, matryoshka_prefixes=(0, 8))


TRUTH = synthetic.superposition(n=96, m=32, l0=3.0, seed=0)


@pytest.mark.parametrize(("arch", "extra"), [("batchtopk", {}), ("matryoshka", {}),
                                             ("jumprelu", {"l0_coefficient": 0.04})])
def test_new_architectures_recover_planted_features(arch: str, extra: dict[str, float]) -> None:
    config = TrainConfig(architecture=arch, d_sae=96, k=3, steps=500, batch_tokens=512, lr=3e-3,
                         buffer_tokens=8192, dead_after_tokens=30_000, **extra)  # type: ignore[arg-type]
    with toy.single_thread():  # tiny tensors: one thread is 10-20x faster on a busy machine
        result = train(TRUTH.chunks(2048, seed=5), 32, config)
    assert result.sae.cfg.architecture == "jumprelu"  # saved as SAELens saves them
    out = recovery.sae_evaluate(result.sae, TRUTH, n_samples=8192)
    assert out["mcc"] > 0.9 and out["f1"] > 0.6, out
    if arch == "jumprelu":  # the L0 penalty moved the thresholds: from ~26 latents a token to near 3
        assert result.loss_curve[0]["l0"] > 15 and 2.0 < out["l0"] < 6.0, out
    else:  # exactly k on average in training; near it at inference (a threshold, not a top-k)
        assert result.loss_curve[-1]["l0"] == pytest.approx(3.0, abs=0.01)
        assert 2.0 < out["l0"] < 4.5, out
