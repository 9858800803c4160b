"""Checking graph nodes causally: the change of a target logit that the local replacement model
predicts when units are ablated or steered, next to the change the model really shows with that
edit applied (``workers.compute.interventions``).

The replacement model is linear (attention patterns, norm scales and gates frozen at the prompt's
values), so an edit is a push ``e_i`` along each edited unit's output direction and the predicted
change is ``sum_i e_i * g_i``, ``g_i`` the total gradient of the target logit along unit i's
direction, for any size of edit. The pushes are solved in layer order, because an edited unit also
moves with the edits upstream of it: with ``J_ij`` the frozen model's effect of a push on unit j on
unit i's activation, zeroing needs ``a_i + sum_j J_ij e_j + e_i = 0`` (so ablating two units on one
path does not count the upstream unit's effect through the downstream one twice), clamping the same
with the clamp value, scaling ``e_i = (value - 1) (a_i + sum_j J_ij e_j)`` and steering
``e_i = value``. This is what the real edit does too (it reads a unit's activation after the
edits upstream). The gap between that and the real change is what freezing
attention, norms and gates leaves out; where nothing downstream of the units is nonlinear (a planted
circuit with linear norms and gates that read the token only) the two agree to float precision.

A transcoder feature's direction is its decoder row, added to the MLP's output (the layer's
leaf in the frozen run), and its value the transcoder's pre-activation of the MLP's frozen-normed
input; the real edit adds ``(a' - a) W_dec[f]`` to the real MLP output (the transcoder's error
kept), so the same push. The prediction follows the feature while it stays active (a TopK
transcoder's feature leaving the top k, or a ReLU crossing zero, is what the linear model leaves out).

Edits (the intervention ops that need nothing but the edit itself): ``zero`` (ablate, a' = 0),
``scale`` (a' = value * a), ``clamp`` (a' = value) and ``steer`` (add value along the unit's
direction: a' = a + value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from workers.compute import hooks, replacement
from workers.compute.graph_basis import layer_bases, unit_values
from workers.compute.graph_config import CHECK_OPS, MAX_CHECK_VALUE
from workers.compute.interventions import Edit, Intervention, applied


@dataclass(frozen=True)
class Check:
    clean: float  # the target logit, unedited
    predicted: float  # its change predicted by the replacement model
    real: float  # its change with the edit applied to the model
    terms: tuple[float, ...] = ()  # each unit's share of ``predicted``, in the order given


def check_edit(op: str, value: float) -> None:
    """Refuse an edit the check does not make (ValueError with the reason)."""
    if op not in CHECK_OPS:
        raise ValueError(f"unknown edit {op!r}: one of {', '.join(CHECK_OPS)}")
    if not math.isfinite(value) or abs(value) > MAX_CHECK_VALUE:
        raise ValueError(f"the edit's value must be a finite number within +-{MAX_CHECK_VALUE:g} (got {value})")


def _new_value(op: str, value: float, a: float) -> float:
    if op == "zero":
        return 0.0
    if op == "scale":
        return value * a
    if op == "clamp":
        return value
    return a + value  # steer


def _edits(units: list[tuple[int, int, int]], saes: dict[int, Any], op: str, value: float) -> list[Edit]:
    """One edit per unit, its positions merged (an edit names a unit once): neurons and SAE features
    at the layer's ``mlp.hook_post``, transcoder features at its ``mlp.hook_in`` (read there, written
    to the MLP's output)."""
    positions: dict[tuple[int, int], list[int]] = {}
    for layer, pos, index in units:
        positions.setdefault((layer, index), []).append(pos)

    def hook(layer: int) -> str:
        sae = saes.get(layer)
        return f"blocks.{layer}.mlp.hook_in" if sae is not None and sae.cfg.transcoder else f"blocks.{layer}.mlp.hook_post"

    return [Edit(hook(layer), index, op, value=value, sae=saes.get(layer), positions=tuple(sorted(p)))
            for (layer, index), p in positions.items()]


def node_check(model: Any, ids: torch.Tensor, units: list[tuple[int, int, int]], target: int,
               saes: dict[int, Any] | None = None, *, op: str = "zero", value: float = 0.0) -> Check:
    """Edit the units (layer, position, index: neurons, or features of the layer's SAE or transcoder
    in ``saes``) together with ``op``/``value`` and compare the predicted and real change of the ``target``
    logit at the last position."""
    check_edit(op, value)
    if len(set(units)) != len(units):
        raise ValueError("a unit is named twice")
    saes = saes or {}
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    frozen = replacement.clean_run(model, ids)
    bases = layer_bases(model, frozen, saes)
    for layer, pos, index in units:
        if not (0 <= layer < len(bases) and 0 <= pos < bases[0].acts.shape[0]
                and 0 <= index < bases[layer].acts.shape[1]):
            raise ValueError(f"unit (layer {layer}, position {pos}, index {index}) is out of range: "
                             f"{len(bases)} layers, {bases[0].acts.shape[0]} positions"
                             + (f", {bases[layer].acts.shape[1]} units on layer {layer}" if 0 <= layer < len(bases) else ""))
    run = replacement.frozen_run(model, frozen, 1, total=True)
    logit = replacement.logits_at(model, run.final[0, -1], torch.tensor([target], device=ids.device))[0]
    cells = torch.tensor(units, dtype=torch.long, device=ids.device).reshape(-1, 3)
    values = unit_values(bases, run.computed, cells, run.mlp_in)  # [U]: each unit as the frozen model computes it

    def along(grads: tuple[torch.Tensor | None, ...]) -> list[float]:
        """A gradient over the leaves (None: a leaf it does not reach), along each edited unit's direction."""
        out = []
        for layer, pos, index in units:
            grad = grads[layer]
            out.append(0.0 if grad is None else float(grad[0, pos] @ bases[layer].directions[index]))
        return out

    gradient = along(torch.autograd.grad(logit, run.leaves, retain_graph=True))
    effect = [along(torch.autograd.grad(values[i], run.leaves, retain_graph=True, allow_unused=True))
              if any(other[0] < units[i][0] for other in units) else [0.0] * len(units)
              for i in range(len(units))]  # effect[i][j]: unit i's change per unit push on unit j
    push = [0.0] * len(units)
    for i in sorted(range(len(units)), key=lambda k: units[k][0]):
        a = float(bases[units[i][0]].acts[units[i][1], units[i][2]])
        moved = a + sum(effect[i][j] * push[j] for j in range(len(units)) if units[j][0] < units[i][0])
        push[i] = _new_value(op, value, moved) - moved
    terms = [p * g for p, g in zip(push, gradient, strict=True)]
    arch = hooks.architecture_for(model.config.model_type)
    n_layers = len(replacement.layers(model))
    with torch.no_grad(), applied(model, arch, n_layers, Intervention(_edits(units, saes, op, value))):
        edited = float(model(ids[None]).logits[0, -1, target])
    clean = float(logit.detach())
    return Check(clean=clean, predicted=sum(terms), real=edited - clean, terms=tuple(terms))


def zero_ablation_check(model: Any, ids: torch.Tensor, units: list[tuple[int, int, int]], target: int,
                        saes: dict[int, Any] | None = None) -> Check:
    """``node_check`` with the units zeroed."""
    return node_check(model, ids, units, target, saes, op="zero")
