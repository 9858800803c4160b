"""Where each supported transformers architecture keeps its parts, and how its norms act on a
direction written to the residual stream.

Every accessor takes ``Any``: submodules are found by attribute, which torch's typing cannot follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class HookError(ValueError):
    """An unknown hook point or architecture; the message lists the valid ones."""


def _none(_: Any) -> None:
    return None


@dataclass(frozen=True)
class Architecture:
    """The parts of one architecture that hooks and logit effects need."""

    name: str
    causal: bool
    layers: Callable[[Any], Sequence[nn.Module]]
    # The MLP: its first input is `mlp.hook_in` (after the MLP's pre-norm, where there is one).
    mlp: Callable[[Any], nn.Module]
    # The module whose input is `mlp.hook_post` (the MLP's down projection).
    mlp_out: Callable[[Any], nn.Module]
    # The module whose first input is `hook_resid_mid` (the residual stream between attention and
    # MLP); None where attention and MLP both read the block's input (parallel blocks).
    resid_mid: Callable[[Any], nn.Module | None]
    # [d_mlp, d_model]: what each neuron writes before any post-MLP norm.
    down_directions: Callable[[Any], torch.Tensor]
    final_norm: Callable[[Any], nn.Module | None]
    unembed: Callable[[Any], torch.Tensor | None]
    # A norm on the MLP's output before the residual add (Gemma 2/3, OLMo 2).
    post_mlp_norm: Callable[[Any], nn.Module | None] = _none
    # LayerNorm removes the mean before scaling; RMSNorm only scales.
    norm_centers: bool = False
    # Gemma's RMSNorm multiplies by (1 + weight), the others by weight.
    norm_offset: float = 0.0
    n_layers_key: str = "num_hidden_layers"
    d_model_key: str = "hidden_size"
    d_mlp_key: str = "intermediate_size"

    def through_norm(self, norm: nn.Module | None, directions: torch.Tensor) -> torch.Tensor:
        """directions [..., d_model] through ``norm`` with its normalising scale (1/std or 1/rms of
        the token it acts on) frozen: a positive factor per token, the same for every direction, so
        it changes no ranking. LayerNorm also removes each direction's mean; bias is no effect."""
        d = directions.float()
        if norm is None:
            return d
        if self.norm_centers:
            d = d - d.mean(-1, keepdim=True)
        weight = getattr(norm, "weight", None)
        if weight is None:
            return d
        return d * (weight.detach().float().to(d.device) + self.norm_offset)

    def neuron_directions(self, layer: Any) -> torch.Tensor:
        """[d_mlp, d_model]: what each neuron adds to the residual stream (through the post-MLP
        norm, where there is one, with its scale frozen)."""
        return self.through_norm(self.post_mlp_norm(layer), self.down_directions(layer))


def _linear_out_dirs(linear: Any) -> torch.Tensor:
    return linear.weight.detach().T  # nn.Linear stores [out, in]: [d_model, d_mlp] -> [d_mlp, d_model]


def _output_embeddings(model: Any) -> torch.Tensor:
    """[vocab, d_model]; transformers renamed GPT-NeoX's ``embed_out`` to ``lm_head``, so ask it."""
    return model.get_output_embeddings().weight.detach()


def _decoder(name: str, **parts: Any) -> Architecture:
    """A LLaMA-style decoder (``model.layers``, ``mlp.down_proj``, ``model.norm``, ``lm_head``)."""
    defaults: dict[str, Any] = {
        "causal": True,
        "layers": lambda m: m.model.layers,
        "mlp": lambda layer: layer.mlp,
        "mlp_out": lambda layer: layer.mlp.down_proj,
        "resid_mid": lambda layer: layer.post_attention_layernorm,
        "down_directions": lambda layer: _linear_out_dirs(layer.mlp.down_proj),
        "final_norm": lambda m: m.model.norm,
        "unembed": _output_embeddings,
    }
    return Architecture(name=name, **{**defaults, **parts})


_LLAMA = _decoder("llama")
# Gemma 2 and 3: pre- and post-norms around attention and MLP, RMSNorm by (1 + weight); the
# embedding's sqrt(d_model) scale is inside its module, so hook_resid_pre of block 0 includes it.
_GEMMA = _decoder("gemma", resid_mid=lambda layer: layer.pre_feedforward_layernorm,
                  post_mlp_norm=lambda layer: layer.post_feedforward_layernorm, norm_offset=1.0)
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _decoder("qwen3"),
    "phi3": _decoder("phi3"),
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    # OLMo 2 norms the outputs of attention and MLP, not their inputs: the MLP reads hook_resid_mid.
    "olmo2": _decoder("olmo2", resid_mid=lambda layer: layer.mlp,
                      post_mlp_norm=lambda layer: layer.post_feedforward_layernorm),
    "bert": Architecture(
        name="bert",
        causal=False,
        layers=lambda m: m.encoder.layer,
        mlp=lambda layer: layer.intermediate,
        mlp_out=lambda layer: layer.output.dense,
        # Post-LN: the MLP reads the attention block's normed output, which is the residual stream.
        resid_mid=lambda layer: layer.intermediate,
        down_directions=lambda layer: _linear_out_dirs(layer.output.dense),
        final_norm=_none,
        unembed=_none,
        norm_centers=True,
    ),
    "gpt2": Architecture(
        name="gpt2",
        causal=True,
        layers=lambda m: m.transformer.h,
        mlp=lambda layer: layer.mlp,
        mlp_out=lambda layer: layer.mlp.c_proj,
        resid_mid=lambda layer: layer.ln_2,
        # GPT-2's Conv1D stores [in, out]: already [d_mlp, d_model].
        down_directions=lambda layer: layer.mlp.c_proj.weight.detach(),
        final_norm=lambda m: m.transformer.ln_f,
        unembed=_output_embeddings,
        norm_centers=True,
        n_layers_key="n_layer",
        d_model_key="n_embd",
        d_mlp_key="n_inner",
    ),
    # Pythia is GPT-NeoX with use_parallel_residual: attention and MLP both read the block's input.
    "gpt_neox": Architecture(
        name="gpt_neox",
        causal=True,
        layers=lambda m: m.gpt_neox.layers,
        mlp=lambda layer: layer.mlp,
        mlp_out=lambda layer: layer.mlp.dense_4h_to_h,
        resid_mid=lambda layer: None if layer.use_parallel_residual else layer.post_attention_layernorm,
        down_directions=lambda layer: _linear_out_dirs(layer.mlp.dense_4h_to_h),
        final_norm=lambda m: m.gpt_neox.final_layer_norm,
        unembed=_output_embeddings,
        norm_centers=True,
    ),
}


def architecture_for(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise HookError(f"unsupported architecture {model_type!r}; supported: {supported}") from None


def dims(config: Any, arch: Architecture) -> tuple[int, int, int]:
    """(n_layers, d_model, d_mlp) from a transformers config."""
    n_layers = int(getattr(config, arch.n_layers_key))
    d_model = int(getattr(config, arch.d_model_key))
    d_mlp = getattr(config, arch.d_mlp_key, None) or 4 * d_model
    return n_layers, d_model, int(d_mlp)
