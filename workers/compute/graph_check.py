"""Checking graph nodes causally: the change of a target logit that the local replacement model
predicts when units are zero-ablated, next to the change the model really shows with those units
zeroed (``workers.compute.interventions``). The prediction is exact for the frozen model (it is
linear: the sum of each unit's activation times its total gradient); the gap to the real change is
what freezing attention, norms and gates leaves out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workers.compute import hooks, replacement
from workers.compute.graph_basis import layer_bases
from workers.compute.interventions import Edit, Intervention, applied


@dataclass(frozen=True)
class Check:
    clean: float  # the target logit, unedited
    predicted: float  # its change predicted by the replacement model
    real: float  # its change with the units zeroed in the model


def _edits(units: list[tuple[int, int, int]], saes: dict[int, Any]) -> list[Edit]:
    """One zero edit per unit, its positions merged (an edit names a unit once)."""
    positions: dict[tuple[int, int], list[int]] = {}
    for layer, pos, index in units:
        positions.setdefault((layer, index), []).append(pos)
    return [Edit(f"blocks.{layer}.mlp.hook_post", index, "zero", sae=saes.get(layer), positions=tuple(sorted(p)))
            for (layer, index), p in positions.items()]


def zero_ablation_check(model: Any, ids: torch.Tensor, units: list[tuple[int, int, int]], target: int,
                        saes: dict[int, Any] | None = None) -> Check:
    """Zero the units (layer, position, index: neurons, or features of the layer's SAE in ``saes``)
    together and compare the predicted and real change of the ``target`` logit at the last position."""
    saes = saes or {}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    frozen = replacement.clean_run(model, ids)
    bases = layer_bases(model, frozen, saes)
    run = replacement.frozen_run(model, frozen, 1, total=True)
    logit = replacement.logits_at(model, run.final[0, -1], torch.tensor([target], device=ids.device))[0]
    grads = torch.autograd.grad(logit, run.leaves)  # per layer [1, T, d_model]
    predicted = sum(-float(bases[layer].acts[pos, index] * (grads[layer][0, pos] @ bases[layer].directions[index]))
                    for layer, pos, index in units)
    arch = hooks.architecture_for(model.config.model_type)
    n_layers = len(replacement.layers(model))
    with torch.no_grad(), applied(model, arch, n_layers, Intervention(_edits(units, saes))):
        edited = float(model(ids[None]).logits[0, -1, target])
    return Check(clean=float(logit), predicted=predicted, real=edited - float(logit))
