"""What ablating one unit does to a model's next-token predictions on a set of prefixes.

Each prefix is a context cut just after the token where the unit fired hardest, so the prediction
that matters is the last one. Prefixes are left-padded into one batch, plain rows first and ablated
rows after (one forward pass for both), with position ids counted from each prefix's first real
token so padding changes nothing (absolute position embeddings included).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from workers.compute import hooks
from workers.compute.interventions import Edit, Intervention, applied


@dataclass(frozen=True)
class AblationEffect:
    kl: torch.Tensor
    """[n] KL(plain || ablated) of the next-token distribution at each prefix's last token, nats."""
    logprob_change: torch.Tensor
    """[n] log P_ablated(watched) - log P_plain(watched), P of the set: the tokens' summed probability
    (per token, the ones a unit does not promote would rise whenever one it promotes loses its mass)."""
    prob_change: torch.Tensor
    """[vocab] mean over prefixes of p_ablated - p_plain (the tokens the ablation lowers are negative)."""


def _batch(prefixes: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids, each [n, T]."""
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prefixes), width, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        ids[row, width - len(prefix):] = torch.tensor(prefix)
        mask[row, width - len(prefix):] = 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), positions.to(device)


def last_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] float32 logits at the last column."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, **keep).logits[:, -1].float()


def ablation_effect(model: nn.Module, arch: hooks.Architecture, n_layers: int, prefixes: list[list[int]],
                    edit: Edit, watched: list[int], pad_id: int = 0) -> AblationEffect:
    """The effect of ``edit`` (applied at every position) on the prediction after each prefix."""
    device = str(next(model.parameters()).device)
    ids, mask, positions = _batch(prefixes + prefixes, pad_id, device)
    n = len(prefixes)
    with torch.inference_mode(), applied(model, arch, n_layers, Intervention([edit], rows=slice(n, 2 * n))):
        logits = last_logits(model, ids, mask, positions)
    log_p, log_q = torch.log_softmax(logits[:n].double(), -1), torch.log_softmax(logits[n:].double(), -1)
    p, q = log_p.exp(), log_q.exp()
    kl = (p * (log_p - log_q)).sum(-1).clamp_min(0)
    index = torch.tensor(watched, dtype=torch.long, device=log_p.device)
    change = log_q.index_select(1, index).logsumexp(1) - log_p.index_select(1, index).logsumexp(1)
    return AblationEffect(kl.float().cpu(), change.float().cpu(), (q - p).mean(0).float().cpu())
