"""Relations of an SAE's features: nearest features by decoder cosine, and decoder alignment
with the neurons (share of a feature's decoder L1 on each neuron, for SAEs on mlp.hook_post)."""

from __future__ import annotations

import torch

CHUNK = 1024


@torch.no_grad()
def nearest_by_cosine(W_dec: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W_dec [d_sae, d_in] -> (cosines, indices), each [d_sae, top]: the most similar other features."""
    unit = W_dec.float() / W_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    top = min(top, unit.shape[0] - 1)
    values, indices = [], []
    for start in range(0, unit.shape[0], CHUNK):
        sims = unit[start : start + CHUNK] @ unit.T  # [chunk, d_sae]
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -torch.inf  # a feature is not its own neighbour
        best = sims.topk(top, dim=1)
        values.append(best.values)
        indices.append(best.indices)
    return torch.cat(values), torch.cat(indices)


@torch.no_grad()
def neuron_alignment(W_dec: torch.Tensor) -> torch.Tensor:
    """[d_sae, d_mlp]: each feature's share of its decoder L1 norm on each neuron (rows sum to 1)."""
    magnitude = W_dec.float().abs()
    return magnitude / magnitude.sum(1, keepdim=True).clamp_min(1e-12)


def top_alignment(shares: torch.Tensor, top: int) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                            tuple[torch.Tensor, torch.Tensor]]:
    """((values, neuron indices) [d_sae, top] per feature, (values, feature indices) [d_mlp, top] per neuron)."""
    per_feature = shares.topk(min(top, shares.shape[1]), dim=1)
    per_neuron = shares.T.topk(min(top, shares.shape[0]), dim=1)
    return (per_feature.values, per_feature.indices), (per_neuron.values, per_neuron.indices)
