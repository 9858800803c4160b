"""Logit effects: the tokens a unit's output direction pushes up and down most, through the
final norm and the unembedding (the direct path).

The final norm acts on the direction as it does on the residual stream, with its normalising
scale (1/std or 1/rms of the token) frozen: LayerNorm removes the direction's mean and multiplies
by its weight, RMSNorm only multiplies (Gemma's by 1 + weight). The frozen scale is positive and
the same for every direction, so the ranking is exact; its bias is no effect of the direction.
Gemma's final logit soft-capping (``cap * tanh(logits / cap)``) is monotone and applies to the
whole logit, not to one direction's share of it: effects are reported before it.

On a CPU with bfloat16 dot products the float32 product of every direction with the whole
vocabulary (about 1 TFLOP for a 16k SAE on a 49k vocabulary) is *screened* instead: a bfloat16
product (three times faster there) picks each side's ``SCREEN`` best tokens, whose logits are
then computed in float32. A proven bound on the bfloat16 error tells whether the float32 top
tokens are certainly among them; the few directions where it can't tell get the full float32 row.
The result is the exact top tokens either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.compute.hooks import Architecture

TOP_TOKENS = 10
CHUNK = 512
# Candidates per side read off the bfloat16 product: the float32 top 10 is certified among them
# for nearly every direction (measured on SmolLM2 with random and trained SAE directions).
SCREEN = 32
# bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most this fraction.
BF16_UNIT = 2.0**-8


def logit_effects(model: nn.Module, arch: Architecture, directions: torch.Tensor,
                  top: int = TOP_TOKENS) -> list[dict[str, Any]]:
    """directions [U, d_model] -> per unit {"up": [[token, value], ...], "down": [...]}."""
    unembed = arch.unembed(model)
    if unembed is None:
        return [{} for _ in range(directions.shape[0])]
    norm = arch.final_norm(model)
    with torch.inference_mode():
        W_U = unembed.detach().float()  # [vocab, d_model]
        screen = Bf16Screen(W_U) if _screens(W_U, top) else None
        out: list[dict[str, Any]] = []
        for start in range(0, directions.shape[0], CHUNK):
            d = arch.through_norm(norm, directions[start : start + CHUNK].float().to(W_U.device))
            up_i, up_v, down_i, down_v = screen.top(d, top) if screen is not None else exact_top(d, W_U, top)
            for ui, uv, di, dv in zip(up_i.tolist(), up_v.tolist(), down_i.tolist(), down_v.tolist(), strict=True):
                out.append({"up": [[t, round(v, 4)] for t, v in zip(ui, uv, strict=True)],
                            "down": [[t, round(v, 4)] for t, v in zip(di, dv, strict=True)]})
    return out


def exact_top(d: torch.Tensor, W_U: torch.Tensor, top: int) -> tuple[torch.Tensor, ...]:
    """(up tokens, up values, down tokens, down values) [C, top] of directions ``d`` [C, d_model]
    from their float32 logits over the whole vocabulary."""
    logits = d @ W_U.T  # [C, vocab]
    up = torch.topk(logits, top, dim=1)
    down = torch.topk(logits, top, dim=1, largest=False)
    return up.indices, up.values, down.indices, down.values


def _screens(W_U: torch.Tensor, top: int) -> bool:
    """Screen where bfloat16 products are fast (a CPU with native bfloat16 dot products) and the
    vocabulary is large enough for the screen to leave most of it out."""
    return (W_U.device.type == "cpu" and bool(torch.cpu._is_avx512_bf16_supported())
            and W_U.shape[0] > 4 * max(SCREEN, top))


class Bf16Screen:
    """The bfloat16 screen over one unembedding (see the module docstring).

    Write a direction ``a = a' + r`` and a token's row ``b = b' + R`` with ``a'``, ``b'`` their
    bfloat16 roundings (``r``, ``R`` exact in float32). Then ``a.b - a'.b' = a'.R + r.b' + r.R``,
    at most ``|a'| max|R| + |r| (max|b'| + max|R|)`` over the vocabulary (Cauchy-Schwarz with the
    actual residuals: several times tighter than bounding each rounding by 2^-8). Float32
    accumulation of d exact bfloat16 products adds at most ``d 2^-24 |a'| max|b'|`` (doubled
    here), and rounding the output to bfloat16 ``u |x| / (1 - u)`` with u = 2^-8.
    """

    def __init__(self, W_U: torch.Tensor) -> None:
        self.W_U = W_U
        self.W_U_bf16 = W_U.bfloat16()
        rounded = self.W_U_bf16.float()
        self.max_residual = float((W_U - rounded).norm(dim=1).max())
        self.max_row = float(rounded.norm(dim=1).max())
        self.accumulation = 2 * W_U.shape[1] * 2.0**-24 * self.max_row
        self.rel_output = BF16_UNIT / (1 - BF16_UNIT)

    def top(self, d: torch.Tensor, top: int) -> tuple[torch.Tensor, ...]:
        d_bf16 = d.bfloat16()
        approx = d_bf16 @ self.W_U_bf16.T  # [C, vocab]
        rounded = d_bf16.float()
        a, r = rounded.norm(dim=1), (d - rounded).norm(dim=1)
        # Every token's error but the output rounding, plus a floor for bfloat16's flushed subnormals.
        slack = a * (self.max_residual + self.accumulation) + r * (self.max_row + self.max_residual) + 1e-30  # [C]
        up_i, up_v, up_ok = self._side(d, approx, slack, top, largest=True)
        down_i, down_v, down_ok = self._side(d, approx, slack, top, largest=False)
        redo = (~(up_ok & down_ok)).nonzero().squeeze(1)
        if redo.numel():  # uncertified directions: their whole float32 rows
            exact = exact_top(d[redo], self.W_U, top)
            for held, new in zip((up_i, up_v, down_i, down_v), exact, strict=True):
                held[redo] = new
        return up_i, up_v, down_i, down_v

    def _side(self, d: torch.Tensor, approx: torch.Tensor, slack: torch.Tensor, top: int,
              largest: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One side's top tokens and float32 values [C, top] among the screen's candidates, and
        [C] whether they are certainly the float32 top over the whole vocabulary."""
        candidates = torch.topk(approx, SCREEN, dim=1, largest=largest)
        logits = torch.bmm(self.W_U[candidates.indices], d.unsqueeze(2)).squeeze(2)  # [C, SCREEN]
        best = torch.topk(logits, top, dim=1, largest=largest)
        tokens = candidates.indices.gather(1, best.indices)
        # A token left out has a bfloat16 logit no better than the last candidate's, so (x + e|x|
        # being monotone in x for e < 1) a float32 logit no better than this bound.
        edge = candidates.values[:, -1].float()
        if largest:
            bound = edge + self.rel_output * edge.abs() + slack
            return tokens, best.values, best.values[:, -1] > bound
        bound = edge - self.rel_output * edge.abs() - slack
        return tokens, best.values, best.values[:, -1] < bound
