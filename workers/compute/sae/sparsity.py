"""The training-time activations of BatchTopK, JumpReLU and Matryoshka SAEs.

- BatchTopK (Bussmann et al. 2024): the batch's B x k largest ReLU pre-activations are kept,
  wherever they fall, so tokens get different L0s with mean k. At inference it is a JumpReLU with
  one threshold for every latent: the running mean of the smallest kept value (as SAELens).
- JumpReLU (Rajamanoharan et al. 2024, as SAELens trains it): z * H(z - theta) with a learned
  threshold per latent, trained with an L0 penalty; H has no gradient, so theta gets the paper's
  straight-through estimate through a rectangle kernel of width ``bandwidth``:
  d/dtheta [z H(z - theta)] ~ -(theta / eps) K((z - theta) / eps) and
  d/dtheta H(z - theta) ~ -(1 / eps) K((z - theta) / eps), with K(u) = 1 on |u| < 1/2.
- Matryoshka BatchTopK (Bussmann et al. 2025): BatchTopK activations, and the reconstruction loss
  summed over nested prefixes of the latents (the first d/16, d/8, ... d), so early latents must
  reconstruct on their own and learn general features.
"""

from __future__ import annotations

from typing import Any

import torch

THRESHOLD_EMA = 0.01
"""Weight of each batch's smallest kept value in BatchTopK's running threshold."""


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(grad.dtype) / eps
        return grad * (pre > threshold), -(threshold * kernel * grad).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(grad.dtype) / eps
        return torch.zeros_like(pre), -(kernel * grad).sum(0), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [B, d], L0 per token [B]) with straight-through gradients for the threshold."""
    return _JumpReLU.apply(pre, threshold, bandwidth), _Step.apply(pre, threshold, bandwidth).sum(-1)


def batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [B, d] keeping the batch's B*k largest positive values, the smallest kept value)."""
    acts = torch.relu(pre)
    flat = acts.flatten()
    top = flat.topk(min(k * pre.shape[0], flat.numel()), sorted=False)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[top.indices] = True
    kept = top.values[top.values > 0]
    smallest = kept.min().detach() if kept.numel() else pre.new_zeros(())
    return (flat * mask).view_as(acts), smallest


def matryoshka_prefixes(d_sae: int, given: tuple[int, ...] | list[int] = ()) -> list[int]:
    """Nested prefix sizes ending at d_sae: the given ones, or d/16, d/8, d/4, d/2, d."""
    sizes = sorted({int(s) for s in given} | {d_sae}) if given else sorted({max(1, d_sae >> s) for s in range(5)})
    if sizes[0] < 1 or sizes[-1] != d_sae:
        raise ValueError(f"Matryoshka prefixes must lie in 1..{d_sae} (got {list(given)})")
    return sizes


def matryoshka_reconstructions(f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                               prefixes: list[int]) -> list[torch.Tensor]:
    """The reconstruction from each prefix of latents: b_dec + f[:, :s] @ W_dec[:s] for s in prefixes."""
    out, partial, start = [], b_dec.expand(f.shape[0], -1), 0
    for size in prefixes:
        partial = partial + f[:, start:size] @ W_dec[start:size]
        out.append(partial)
        start = size
    return out


def update_threshold(current: float | None, smallest: torch.Tensor) -> float:
    value = float(smallest)
    return value if current is None else (1 - THRESHOLD_EMA) * current + THRESHOLD_EMA * value
