"""The local replacement model of a LLaMA-style decoder for one prompt (circuit tracing).

A clean run records what the prompt fixes: every RMSNorm's normalising scale (1/rms per token),
every attention pattern, and every MLP neuron's gate ``act(gate_proj(x))``. With those frozen the
model is linear in its token embeddings and its neuron activations ``act(gate) * up`` (the input of
the down projection, ``mlp.hook_post``): a neuron's activation is its frozen gate times its up branch,
which is linear in the residual stream. :func:`frozen_run` builds that linear model on a batch of
copies of the prompt, so one backward pass per copy gives one target's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.compute.graph_config import SUPPORTED_MODEL_TYPES as SUPPORTED


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
    mlp_in: list[torch.Tensor] = field(default_factory=list)  # [T, d_model]: each MLP's normed input (mlp.hook_in)


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
    mlp_in: list[torch.Tensor] = field(default_factory=list)  # [B, T, d_model]: what a transcoder reads


def check_supported(model: Any) -> None:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in SUPPORTED:
        raise ReplacementError(f"attribution graphs need a causal decoder of type {', '.join(SUPPORTED)}; "
                               f"this model is {model_type!r}")


def _gpt2(model: Any) -> bool:
    return getattr(model.config, "model_type", "") == "gpt2"


def _neox(model: Any) -> bool:
    return getattr(model.config, "model_type", "") == "gpt_neox"


def layers(model: Any) -> Any:
    if _neox(model):
        return model.gpt_neox.layers
    return model.transformer.h if _gpt2(model) else model.model.layers


def _parallel(model: Any, layer: Any) -> bool:
    """Whether attention and MLP both read the block's input (Pythia)."""
    return _neox(model) and bool(layer.use_parallel_residual)


def _norms(model: Any, layer: Any) -> tuple[Any, Any]:
    """(the norm attention reads through, the norm the MLP reads through)."""
    return (layer.ln_1, layer.ln_2) if _gpt2(model) else (layer.input_layernorm, layer.post_attention_layernorm)


def _final_norm(model: Any) -> Any:
    if _neox(model):
        return model.gpt_neox.final_layer_norm
    return model.transformer.ln_f if _gpt2(model) else model.model.norm


def _scale(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """[T, 1]: the norm's 1/rms (RMSNorm) or 1/std (LayerNorm) of each token: what is frozen."""
    if isinstance(norm, nn.LayerNorm):
        return torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def _norm(norm: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The norm with its scale given: linear in x (LayerNorm's centring is linear, its bias a bias)."""
    if isinstance(norm, nn.LayerNorm):
        return (x - x.mean(-1, keepdim=True)) * scale * norm.weight + norm.bias
    return x * scale * norm.weight


def down(model: Any, layer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W [d_mlp, d_model], bias [d_model] or None) of the MLP's down projection."""
    if _gpt2(model):
        return layer.mlp.c_proj.weight, layer.mlp.c_proj.bias  # Conv1D stores [in, out]
    if _neox(model):
        return layer.mlp.dense_4h_to_h.weight.T, layer.mlp.dense_4h_to_h.bias
    return layer.mlp.down_proj.weight.T, layer.mlp.down_proj.bias


def _mlp_linear(model: Any, layer: Any, h: torch.Tensor) -> torch.Tensor:
    """The MLP's linear branch: LLaMA's up projection, GPT-2's pre-activation."""
    if _neox(model):
        return layer.mlp.dense_h_to_4h(h)
    return layer.mlp.c_fc(h) if _gpt2(model) else layer.mlp.up_proj(h)


def _gate(model: Any, layer: Any, h: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """The multiplier frozen per neuron: LLaMA's act(gate_proj(h)); for GPT-2 and GPT-NeoX act(pre) / pre
    (the activation function's secant, so gate * pre is the activation; 1/2, its slope, where pre = 0)."""
    if not (_gpt2(model) or _neox(model)):
        return layer.mlp.act_fn(layer.mlp.gate_proj(h))
    safe = torch.where(linear == 0, torch.ones_like(linear), linear)
    return torch.where(linear == 0, torch.full_like(linear, 0.5), layer.mlp.act(linear) / safe)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of the first ``cos.shape[-1]`` dimensions (all, but a share in GPT-NeoX)."""
    width = cos.shape[-1]
    part, rest = x[..., :width], x[..., width:]
    half = width // 2
    rotated = torch.cat((-part[..., half:], part[..., :half]), dim=-1)
    return torch.cat([part * cos + rotated * sin, rest], dim=-1)


def _heads(attn: Any) -> tuple[int, int, int]:
    head_dim = int(attn.head_dim)
    n_heads = attn.q_proj.out_features // head_dim
    return n_heads, attn.k_proj.out_features // head_dim, head_dim


def _causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    T = scores.shape[-1]
    future = torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _probs(model: Any, layer: Any, h: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """[H, T, T] causal attention pattern of one layer on normed input h [T, d_model]."""
    T = h.shape[0]
    if _gpt2(model):
        attn = layer.attn
        q, k, _ = attn.c_attn(h).split(attn.embed_dim, dim=-1)
        q, k = (t.view(T, attn.num_heads, attn.head_dim).transpose(0, 1) for t in (q, k))
        return _causal_softmax(q @ k.transpose(1, 2) / attn.head_dim ** 0.5)
    assert rotary is not None
    if _neox(model):
        attn = layer.attention
        q, k, _ = attn.query_key_value(h).view(T, -1, 3 * attn.head_size).transpose(0, 1).chunk(3, dim=-1)
        q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        return _causal_softmax((q @ k.transpose(1, 2)) * attn.scaling)
    attn = layer.self_attn
    n_heads, n_kv, head_dim = _heads(attn)
    q = _rotate(attn.q_proj(h).view(T, n_heads, head_dim).transpose(0, 1), *rotary)
    k = _rotate(attn.k_proj(h).view(T, n_kv, head_dim).transpose(0, 1), *rotary)
    k = k.repeat_interleave(n_heads // n_kv, dim=0)
    return _causal_softmax((q @ k.transpose(1, 2)) * attn.scaling)


def _attend(model: Any, layer: Any, h: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Attention output for h [B, T, d_model] with the pattern ``probs`` [H, T, T] given."""
    B, T, _ = h.shape
    if _gpt2(model):
        attn = layer.attn
        v = attn.c_attn(h)[..., 2 * attn.embed_dim:].view(B, T, attn.num_heads, attn.head_dim)
        return attn.c_proj(torch.einsum("hts,bshd->bthd", probs, v).reshape(B, T, attn.embed_dim))
    if _neox(model):
        attn = layer.attention
        v = attn.query_key_value(h).view(B, T, -1, 3 * attn.head_size)[..., 2 * attn.head_size:]
        return attn.dense(torch.einsum("hts,bshd->bthd", probs, v).reshape(B, T, -1))
    attn = layer.self_attn
    n_heads, n_kv, head_dim = _heads(attn)
    v = attn.v_proj(h).view(B, T, n_kv, head_dim)
    grouped = probs.view(n_kv, n_heads // n_kv, T, T)  # query heads grouped by the key-value head they read
    out = torch.einsum("kgts,bskd->btkgd", grouped, v).reshape(B, T, n_heads * head_dim)
    return attn.o_proj(out)


def _embed(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """[T, d_model]: what enters the residual stream at each position (GPT-2: token + position)."""
    if _gpt2(model):
        return model.transformer.wte(ids) + model.transformer.wpe(torch.arange(len(ids), device=ids.device))
    if _neox(model):
        return model.gpt_neox.embed_in(ids)
    return model.model.embed_tokens(ids)


def _down_apply(model: Any, layer: Any, acts: torch.Tensor) -> torch.Tensor:
    """The down projection without its bias (added apart, as a bias of the replacement model)."""
    weight, _ = down(model, layer)
    return acts @ weight


def _down_bias(model: Any, layer: Any) -> torch.Tensor | float:
    _, bias = down(model, layer)
    return 0.0 if bias is None else bias


def clean_run(model: Any, ids: torch.Tensor) -> Frozen:
    """Run the prompt ``ids`` [T] once and record what the replacement model freezes."""
    check_supported(model)
    frozen = Frozen([], [], torch.empty(0), [], [], [], [], torch.empty(0), torch.empty(0))
    with torch.no_grad():
        x = _embed(model, ids)
        frozen.embeds = x.clone()
        rotary = None
        if not _gpt2(model):
            trunk = model.gpt_neox if _neox(model) else model.model
            cos, sin = trunk.rotary_emb(x[None], torch.arange(len(ids), device=x.device)[None])
            rotary = (cos[0], sin[0])
        for layer in layers(model):
            attn_norm, mlp_norm = _norms(model, layer)
            frozen.attn_scale.append(_scale(attn_norm, x))
            h = _norm(attn_norm, x, frozen.attn_scale[-1])
            frozen.probs.append(_probs(model, layer, h, rotary))
            block_input = x
            x = x + _attend(model, layer, h[None], frozen.probs[-1])[0]
            mlp_input = block_input if _parallel(model, layer) else x
            frozen.mlp_scale.append(_scale(mlp_norm, mlp_input))
            h = _norm(mlp_norm, mlp_input, frozen.mlp_scale[-1])
            frozen.mlp_in.append(h)
            linear = _mlp_linear(model, layer, h)
            frozen.gates.append(_gate(model, layer, h, linear))
            frozen.acts.append(frozen.gates[-1] * linear)
            frozen.mlp_out.append(_down_apply(model, layer, frozen.acts[-1]))
            x = x + frozen.mlp_out[-1] + _down_bias(model, layer)
        final_norm = _final_norm(model)
        frozen.final_scale = _scale(final_norm, x)
        frozen.final = _norm(final_norm, x, frozen.final_scale)
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


def frozen_run(model: Any, frozen: Frozen, batch: int, *, total: bool, zero: bool = False,
               neurons: list[bool] | None = None) -> Linear:
    """The linear replacement model on ``batch`` copies of the prompt.

    ``total=False`` (direct effects): each layer's MLP output is its leaf (set to the clean output),
    so a gradient reaches a neuron only along paths that enter no later MLP. ``total=True`` (total
    effects): each layer writes the down projection of its computed activations plus a zero leaf, so
    the gradient at a leaf is the total effect through later neurons too. ``zero=True`` sets the
    embeddings and leaves to zero: the outputs are then what the biases alone produce. ``neurons``
    (direct effects only) says which layers' neuron activations ``computed`` holds (default all; an
    empty tensor elsewhere): a graph whose layer reads a transcoder on the MLP input needs none there,
    and on a batch of copies the up projection is most of the forward pass.
    """
    if total and neurons is not None:
        raise ValueError("total effects run through every layer's neurons")
    size = (batch, *frozen.embeds.shape)
    embeds = (frozen.embeds.new_zeros(size) if zero else frozen.embeds.expand(size).clone()).requires_grad_()
    run = Linear(embeds, [], [], torch.empty(0))
    x = embeds
    for index, layer in enumerate(layers(model)):
        attn_norm, mlp_norm = _norms(model, layer)
        block_input = x
        x = x + _attend(model, layer, _norm(attn_norm, x, frozen.attn_scale[index]), frozen.probs[index])
        mlp_input = block_input if _parallel(model, layer) else x
        h = _norm(mlp_norm, mlp_input, frozen.mlp_scale[index])
        if neurons is None or neurons[index]:
            computed = frozen.gates[index] * _mlp_linear(model, layer, h)
        else:
            computed = h.new_zeros(0)
        shape = (batch, *frozen.mlp_out[index].shape)
        clean = frozen.embeds.new_zeros(shape) if zero or total else frozen.mlp_out[index].expand(shape).clone()
        leaf = clean.requires_grad_()
        x = x + (_down_apply(model, layer, computed) + leaf if total else leaf) + _down_bias(model, layer)
        run.leaves.append(leaf)
        run.computed.append(computed)
        run.mlp_in.append(h)
    run.final = _norm(_final_norm(model), x, frozen.final_scale)
    return run
