"""The local replacement model of a LLaMA-style decoder for one prompt (circuit tracing).

A clean run records what the prompt fixes: every RMSNorm's normalising scale (1/rms per token),
every attention pattern, and every MLP neuron's gate ``act(gate_proj(x))``. With those frozen the
model is linear in its token embeddings and its neuron activations ``act(gate) * up`` (the input of
the down projection, ``mlp.hook_post``): a neuron's activation is its frozen gate times its up branch,
which is linear in the residual stream. :func:`frozen_run` builds that linear model on a batch of
copies of the prompt, so one backward pass per copy gives one target's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

# Architectures whose blocks this module writes out (pre-RMSNorm, rotary attention, gated MLP).
SUPPORTED = ("llama", "qwen2")


class ReplacementError(ValueError):
    """The model cannot be traced (not a causal decoder this module writes out)."""


@dataclass
class Frozen:
    """What the clean run of one prompt fixes, per layer; T is the prompt's length."""

    attn_scale: list[torch.Tensor]  # [T, 1]: 1/rms of each block's input
    mlp_scale: list[torch.Tensor]  # [T, 1]: 1/rms of the residual stream the MLP reads
    final_scale: torch.Tensor  # [T, 1]
    probs: list[torch.Tensor]  # [H, T, T]: attention patterns
    gates: list[torch.Tensor]  # [T, d_mlp]: act(gate_proj(x)) per neuron
    acts: list[torch.Tensor]  # [T, d_mlp]: neuron activations (mlp.hook_post)
    mlp_out: list[torch.Tensor]  # [T, d_model]: what each MLP writes
    embeds: torch.Tensor  # [T, d_model]
    final: torch.Tensor  # [T, d_model]: the final norm's output


@dataclass
class Linear:
    """One frozen forward pass on B copies of the prompt. Leaves carry gradients: ``embeds`` and,
    per layer, ``leaves`` (added to what the MLP writes: a neuron's gradient is the leaf's gradient
    times its down-projection column); ``computed`` is each layer's neuron activations as the frozen
    model computes them from the residual stream."""

    embeds: torch.Tensor  # [B, T, d_model]
    leaves: list[torch.Tensor]  # [B, T, d_model]
    computed: list[torch.Tensor]  # [B, T, d_mlp]
    final: torch.Tensor  # [B, T, d_model]


def check_supported(model: Any) -> None:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED:
        raise ReplacementError(f"attribution graphs need a causal decoder of type {', '.join(SUPPORTED)}; "
                               f"this model is {model_type!r}")


def _rms_scale(norm: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _heads(attn: Any) -> tuple[int, int, int]:
    head_dim = int(attn.head_dim)
    n_heads = attn.q_proj.out_features // head_dim
    return n_heads, attn.k_proj.out_features // head_dim, head_dim


def _probs(attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[H, T, T] causal attention pattern of one layer on normed input h [T, d_model]."""
    n_heads, n_kv, head_dim = _heads(attn)
    T = h.shape[0]
    q = _rotate(attn.q_proj(h).view(T, n_heads, head_dim).transpose(0, 1), cos, sin)
    k = _rotate(attn.k_proj(h).view(T, n_kv, head_dim).transpose(0, 1), cos, sin)
    k = k.repeat_interleave(n_heads // n_kv, dim=0)
    scores = (q @ k.transpose(1, 2)) * attn.scaling
    future = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _attend(attn: Any, h: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Attention output for h [B, T, d_model] with the pattern ``probs`` [H, T, T] given."""
    n_heads, n_kv, head_dim = _heads(attn)
    B, T, _ = h.shape
    v = attn.v_proj(h).view(B, T, n_kv, head_dim)
    grouped = probs.view(n_kv, n_heads // n_kv, T, T)  # query heads grouped by the key-value head they read
    out = torch.einsum("kgts,bskd->btkgd", grouped, v).reshape(B, T, n_heads * head_dim)
    return attn.o_proj(out)


def clean_run(model: Any, ids: torch.Tensor) -> Frozen:
    """Run the prompt ``ids`` [T] once and record what the replacement model freezes."""
    check_supported(model)
    trunk = model.model
    frozen = Frozen([], [], torch.empty(0), [], [], [], [], torch.empty(0), torch.empty(0))
    with torch.no_grad():
        x = trunk.embed_tokens(ids[None])[0]
        frozen.embeds = x.clone()
        cos, sin = trunk.rotary_emb(x[None], torch.arange(len(ids), device=x.device)[None])
        for layer in trunk.layers:
            frozen.attn_scale.append(_rms_scale(layer.input_layernorm, x))
            h = x * frozen.attn_scale[-1] * layer.input_layernorm.weight
            frozen.probs.append(_probs(layer.self_attn, h, cos[0], sin[0]))
            x = x + _attend(layer.self_attn, h[None], frozen.probs[-1])[0]
            frozen.mlp_scale.append(_rms_scale(layer.post_attention_layernorm, x))
            h = x * frozen.mlp_scale[-1] * layer.post_attention_layernorm.weight
            mlp = layer.mlp
            frozen.gates.append(mlp.act_fn(mlp.gate_proj(h)))
            frozen.acts.append(frozen.gates[-1] * mlp.up_proj(h))
            frozen.mlp_out.append(mlp.down_proj(frozen.acts[-1]))
            x = x + frozen.mlp_out[-1]
        frozen.final_scale = _rms_scale(trunk.norm, x)
        frozen.final = x * frozen.final_scale * trunk.norm.weight
    return frozen


def unembed(model: Any) -> torch.Tensor:
    """[vocab, d_model]."""
    return model.get_output_embeddings().weight.detach()


def logits_at(model: Any, final: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The logits of ``tokens`` [k] read from final-norm outputs ``final`` [..., d_model] -> [..., k];
    only k rows of the unembedding are touched, so memory does not grow with the vocabulary."""
    head = model.get_output_embeddings()
    out = final @ head.weight[tokens].T
    if getattr(head, "bias", None) is not None:
        out = out + head.bias[tokens]
    return out


def frozen_run(model: Any, frozen: Frozen, batch: int, *, total: bool, zero: bool = False) -> Linear:
    """The linear replacement model on ``batch`` copies of the prompt.

    ``total=False`` (direct effects): each layer's MLP output is its leaf (set to the clean output),
    so a gradient reaches a neuron only along paths that enter no later MLP. ``total=True`` (total
    effects): each layer writes the down projection of its computed activations plus a zero leaf, so
    the gradient at a leaf is the total effect through later neurons too. ``zero=True`` sets the
    embeddings and leaves to zero: the outputs are then what the biases alone produce.
    """
    trunk = model.model
    size = (batch, *frozen.embeds.shape)
    embeds = (frozen.embeds.new_zeros(size) if zero else frozen.embeds.expand(size).clone()).requires_grad_()
    run = Linear(embeds, [], [], torch.empty(0))
    x = embeds
    for index, layer in enumerate(trunk.layers):
        h = x * frozen.attn_scale[index] * layer.input_layernorm.weight
        x = x + _attend(layer.self_attn, h, frozen.probs[index])
        h = x * frozen.mlp_scale[index] * layer.post_attention_layernorm.weight
        computed = frozen.gates[index] * layer.mlp.up_proj(h)
        shape = (batch, *frozen.mlp_out[index].shape)
        clean = frozen.embeds.new_zeros(shape) if zero or total else frozen.mlp_out[index].expand(shape).clone()
        leaf = clean.requires_grad_()
        x = x + (layer.mlp.down_proj(computed) + leaf if total else leaf)
        run.leaves.append(leaf)
        run.computed.append(computed)
    run.final = x * frozen.final_scale * trunk.norm.weight
    return run
