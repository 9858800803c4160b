"""Logit effects: the tokens a unit's output direction pushes up and down most, through the
final norm and the unembedding (the direct path).

The final norm acts on the direction as it does on the residual stream, with its normalising
scale (1/std or 1/rms of the token) frozen: LayerNorm removes the direction's mean and multiplies
by its weight, RMSNorm only multiplies (Gemma's by 1 + weight). The frozen scale is positive and
the same for every direction, so the ranking is exact; its bias is no effect of the direction.
Gemma's final logit soft-capping (``cap * tanh(logits / cap)``) is monotone and applies to the
whole logit, not to one direction's share of it: effects are reported before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.compute.hooks import Architecture

TOP_TOKENS = 10
CHUNK = 256


def logit_effects(model: nn.Module, arch: Architecture, directions: torch.Tensor,
                  top: int = TOP_TOKENS) -> list[dict[str, Any]]:
    """directions [U, d_model] -> per unit {"up": [[token, value], ...], "down": [...]}."""
    unembed = arch.unembed(model)
    if unembed is None:
        return [{} for _ in range(directions.shape[0])]
    norm = arch.final_norm(model)
    with torch.inference_mode():
        W_U = unembed.float()  # [vocab, d_model]
        out: list[dict[str, Any]] = []
        for start in range(0, directions.shape[0], CHUNK):
            d = arch.through_norm(norm, directions[start : start + CHUNK].float().to(W_U.device))
            logits = d @ W_U.T  # [chunk, vocab]
            up = torch.topk(logits, top, dim=1)
            down = torch.topk(-logits, top, dim=1)
            for i in range(d.shape[0]):
                out.append({
                    "up": [[int(t), round(float(v), 4)] for t, v in zip(up.indices[i], up.values[i], strict=True)],
                    "down": [[int(t), round(-float(v), 4)] for t, v in zip(down.indices[i], down.values[i], strict=True)],
                })
    return out
