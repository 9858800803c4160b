"""The units of an attribution graph, layer by layer: a layer's MLP neurons, or the features of an
SAE on its ``mlp.hook_post`` (the neuron activations), read through the frozen model.

A feature's value is its encoder pre-activation ``(x - b_dec) @ W_enc + b_enc`` of the neuron
activations x, which the frozen model computes linearly; for an active feature (the ones that become
nodes) it equals the feature's activation. What a feature writes to the residual stream per unit of
activation is its decoder row through the down projection; the rest of that layer's MLP output
(other features, the decoder bias, the SAE's error) is the layer's error node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workers.compute import replacement


@dataclass
class LayerBasis:
    acts: torch.Tensor  # [T, n]: each unit's activation at each position
    directions: torch.Tensor  # [n, d_model]: what one unit of activation adds to the residual stream
    sae: Any | None = None  # the SparseAutoencoder of a feature layer


def _check_sae(layer: int, sae: Any, d_mlp: int) -> None:
    if sae.cfg.d_in != d_mlp:
        raise ValueError(f"the SAE of layer {layer} reads {sae.cfg.d_in} values, not the {d_mlp} neurons")
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(f"the SAE of layer {layer} normalises each token's input "
                         f"({sae.cfg.normalize_activations}); attribution graphs do not trace that yet")


def layer_bases(model: Any, frozen: replacement.Frozen, saes: dict[int, Any]) -> list[LayerBasis]:
    """One basis per layer: the SAE's features where ``saes`` has one, the neurons elsewhere."""
    out = []
    with torch.no_grad():
        for index, layer in enumerate(replacement.layers(model)):
            down, _ = replacement.down(model, layer)  # [d_mlp, d_model]
            sae = saes.get(index)
            if sae is None:
                out.append(LayerBasis(frozen.acts[index], down))
                continue
            _check_sae(index, sae, down.shape[0])
            out.append(LayerBasis(sae.encode(frozen.acts[index]), sae.W_dec @ down, sae))
    return out


def unit_values(bases: list[LayerBasis], computed: list[torch.Tensor], units: torch.Tensor) -> torch.Tensor:
    """[U]: each unit's value as the frozen model computes it (``computed``: each layer's neuron
    activations [1, T, d_mlp]). Read layer by layer: a stack of every layer would route each backward
    pass through all of them."""
    values = computed[0].new_zeros(len(units))
    for layer in units[:, 0].unique().tolist():
        rows = (units[:, 0] == layer).nonzero()[:, 0]
        x = computed[layer][0, units[rows, 1]]  # [m, d_mlp]
        sae = bases[layer].sae
        if sae is None:
            picked = x.gather(1, units[rows, 2][:, None])[:, 0]
        else:
            picked = sae.pre_acts(x).gather(1, units[rows, 2][:, None])[:, 0]
        values = values.index_put((rows,), picked)
    return values
