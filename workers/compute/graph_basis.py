"""The units of an attribution graph, layer by layer: a layer's MLP neurons, the features of an
SAE on its ``mlp.hook_post`` (the neuron activations), or the features of a transcoder on its
``mlp.hook_in`` (the MLP's normed input), read through the frozen model.

A feature's value is its encoder pre-activation ``(x - b_dec) @ W_enc + b_enc`` of the neuron
activations x, which the frozen model computes linearly; for an active feature (the ones that become
nodes) it equals the feature's activation. What a feature writes to the residual stream per unit of
activation is its decoder row through the down projection; the rest of that layer's MLP output
(other features, the decoder bias, the SAE's error) is the layer's error node.

A transcoder feature's value is its pre-activation ``x @ W_enc + b_enc`` of the MLP's normed input x,
which the frozen model (norm scales frozen) computes linearly from the residual stream; it writes its
decoder row straight to the residual stream. The layer's error node is the true MLP output minus the
selected features' writes: the transcoder's error, its unselected features, its decoder bias and its
skip term (held constant, as the SAE's error is).
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
    sae: Any | None = None  # the SparseAutoencoder (or transcoder) of a feature layer

    @property
    def transcoder(self) -> bool:
        return self.sae is not None and bool(self.sae.cfg.transcoder)


def _check_sae(layer: int, sae: Any, d_mlp: int) -> None:
    if sae.cfg.d_in != d_mlp:
        raise ValueError(f"the SAE of layer {layer} reads {sae.cfg.d_in} values, not the {d_mlp} neurons")
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(f"the SAE of layer {layer} normalises each token's input "
                         f"({sae.cfg.normalize_activations}); attribution graphs do not trace that yet")


def _check_transcoder(layer: int, transcoder: Any, d_model: int) -> None:
    if transcoder.cfg.d_in != d_model or transcoder.cfg.out_dim != d_model:
        raise ValueError(f"the transcoder of layer {layer} maps {transcoder.cfg.d_in} values to "
                         f"{transcoder.cfg.out_dim}, not the MLP's input and output ({d_model} each)")
    if not transcoder.cfg.hook_name.endswith(f"blocks.{layer}.mlp.hook_in"):
        raise ValueError(f"the transcoder given for layer {layer} reads {transcoder.cfg.hook_name or 'no hook'}, "
                         f"not blocks.{layer}.mlp.hook_in")


def layer_bases(model: Any, frozen: replacement.Frozen, saes: dict[int, Any]) -> list[LayerBasis]:
    """One basis per layer: the SAE's (or transcoder's) features where ``saes`` has one, the neurons
    elsewhere."""
    out = []
    with torch.no_grad():
        for index, layer in enumerate(replacement.layers(model)):
            down, _ = replacement.down(model, layer)  # [d_mlp, d_model]
            sae = saes.get(index)
            if sae is None:
                out.append(LayerBasis(frozen.acts[index], down))
            elif sae.cfg.transcoder:
                _check_transcoder(index, sae, down.shape[1])
                out.append(LayerBasis(sae.encode(frozen.mlp_in[index]), sae.W_dec.detach(), sae))
            else:
                _check_sae(index, sae, down.shape[0])
                out.append(LayerBasis(sae.encode(frozen.acts[index]), sae.W_dec @ down, sae))
    return out


def unit_values(bases: list[LayerBasis], computed: list[torch.Tensor], units: torch.Tensor,
                mlp_in: list[torch.Tensor] | None = None, copies: torch.Tensor | None = None) -> torch.Tensor:
    """[U]: each unit's value as the frozen model computes it (``computed``: each layer's neuron
    activations [B, T, d_mlp]; ``mlp_in``: each MLP's normed input [B, T, d_model], which transcoder
    layers read), unit i read from copy ``copies[i]`` of the batch (default: the first). Read layer by
    layer: a stack of every layer would route each backward pass through all of them."""
    copies = units.new_zeros(len(units)) if copies is None else copies
    values = computed[0].new_zeros(len(units))
    for layer in units[:, 0].unique().tolist():
        rows = (units[:, 0] == layer).nonzero()[:, 0]
        basis = bases[layer]
        if basis.transcoder and mlp_in is None:
            raise ValueError("transcoder features are read from the MLP inputs: pass the run's mlp_in")
        source = mlp_in if basis.transcoder and mlp_in is not None else computed
        x = source[layer][copies[rows], units[rows, 1]]  # [m, d_mlp] (or [m, d_model] for a transcoder)
        pre = x if basis.sae is None else basis.sae.pre_acts(x)
        values = values.index_put((rows,), pre.gather(1, units[rows, 2][:, None])[:, 0])
    return values
