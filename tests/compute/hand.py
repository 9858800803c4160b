"""Hook-point activations and logit effects computed by hand from a model's own modules, one
function per architecture, never through the product's hooks (issue 14 item 7, issue 21 item 1).

The only thing taken from inside the forward pass is each attention module's output (a plain torch
hook on the attention module, not a product hook point); the block inputs are transformers's own
``hidden_states``. Everything after attention is recomputed from the block's modules, and each
block's recomputed output is checked against the next ``hidden_states`` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Block = dict[str, torch.Tensor]


def _llama(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    mid = x + a
    h = layer.post_attention_layernorm(mid)
    post = layer.mlp.act_fn(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h)  # act(gate) * up
    return {"hook_resid_mid": mid, "mlp.hook_in": h, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.mlp.down_proj(post)}


def _phi3(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    mid = x + a
    h = layer.post_attention_layernorm(mid)
    gate, up = layer.mlp.gate_up_proj(h).chunk(2, dim=-1)  # one fused projection: [gate | up]
    post = up * layer.mlp.activation_fn(gate)
    return {"hook_resid_mid": mid, "mlp.hook_in": h, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.mlp.down_proj(post)}


def _gemma(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    mid = x + layer.post_attention_layernorm(a)
    h = layer.pre_feedforward_layernorm(mid)
    post = layer.mlp.act_fn(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h)  # GeGLU
    return {"hook_resid_mid": mid, "mlp.hook_in": h, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.post_feedforward_layernorm(layer.mlp.down_proj(post))}


def _olmo2(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    mid = x + layer.post_attention_layernorm(a)
    post = layer.mlp.act_fn(layer.mlp.gate_proj(mid)) * layer.mlp.up_proj(mid)  # no pre-norm
    return {"hook_resid_mid": mid, "mlp.hook_in": mid, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.post_feedforward_layernorm(layer.mlp.down_proj(post))}


def _gpt2(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    mid = x + a
    h = layer.ln_2(mid)
    post = layer.mlp.act(layer.mlp.c_fc(h))
    return {"hook_resid_mid": mid, "mlp.hook_in": h, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.mlp.c_proj(post)}


def _gpt_neox(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    if layer.use_parallel_residual:  # Pythia: attention and MLP both read x
        h = layer.post_attention_layernorm(x)
        post = layer.mlp.act(layer.mlp.dense_h_to_4h(h))
        return {"mlp.hook_in": h, "mlp.hook_post": post, "hook_resid_post": x + a + layer.mlp.dense_4h_to_h(post)}
    mid = x + a
    h = layer.post_attention_layernorm(mid)
    post = layer.mlp.act(layer.mlp.dense_h_to_4h(h))
    return {"hook_resid_mid": mid, "mlp.hook_in": h, "mlp.hook_post": post,
            "hook_resid_post": mid + layer.mlp.dense_4h_to_h(post)}


def _bert(layer: Any, x: torch.Tensor, a: torch.Tensor) -> Block:
    # Post-LN: the attention block's output (its own LayerNorm included) is the residual stream.
    post = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(a))
    out = layer.output.LayerNorm(layer.output.dense(post) + a)
    return {"hook_resid_mid": a, "mlp.hook_in": a, "mlp.hook_post": post, "hook_resid_post": out}


# model_type -> (blocks, attention module of a block, hand computation of a block)
HAND: dict[str, tuple[Callable[[Any], Any], Callable[[Any], nn.Module], Callable[..., Block]]] = {
    "llama": (lambda m: m.model.layers, lambda b: b.self_attn, _llama),
    "mistral": (lambda m: m.model.layers, lambda b: b.self_attn, _llama),
    "qwen2": (lambda m: m.model.layers, lambda b: b.self_attn, _llama),
    "qwen3": (lambda m: m.model.layers, lambda b: b.self_attn, _llama),
    "phi3": (lambda m: m.model.layers, lambda b: b.self_attn, _phi3),
    "gemma2": (lambda m: m.model.layers, lambda b: b.self_attn, _gemma),
    "gemma3_text": (lambda m: m.model.layers, lambda b: b.self_attn, _gemma),
    "olmo2": (lambda m: m.model.layers, lambda b: b.self_attn, _olmo2),
    "gpt2": (lambda m: m.transformer.h, lambda b: b.attn, _gpt2),
    "gpt_neox": (lambda m: m.gpt_neox.layers, lambda b: b.attention, _gpt_neox),
    "bert": (lambda m: m.encoder.layer, lambda b: b.attention, _bert),
}


def activations(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every hook point of every block, ``blocks.{i}.{kind}`` -> [B, T, D], by hand."""
    blocks_of, attention_of, block_fn = HAND[model.config.model_type]
    blocks = blocks_of(model)
    attn: dict[int, torch.Tensor] = {}
    handles = [attention_of(b).register_forward_hook(
        lambda mod, args, out, i=i: attn.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, block in enumerate(blocks):
            acts = {"hook_resid_pre": hidden[i], **block_fn(block, hidden[i], attn[i])}
            if i + 1 < len(blocks):  # the last entry of hidden_states has the final norm applied
                assert torch.allclose(acts["hook_resid_post"], hidden[i + 1], atol=1e-5, rtol=1e-4), \
                    f"hand computation of block {i} does not reproduce transformers's hidden_states"
            out.update({f"blocks.{i}.{kind}": value for kind, value in acts.items()})
    return out


def frozen_norm(norm: nn.Module | None, d: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to directions by its own module, times the per-row scale it divided by
    (computed by hand), minus its bias: the norm acting with its scale frozen."""
    if norm is None:
        return d
    with torch.no_grad():
        if isinstance(norm, nn.LayerNorm):
            scale = (d.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            return (norm(d) - norm.bias) * scale
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        assert eps is not None, f"no eps on {type(norm).__name__}"
        return norm(d) * (d.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def neuron_logits(model: nn.Module, layer: int, final_norm: nn.Module | None, post_mlp_norm: nn.Module | None
                  ) -> torch.Tensor:
    """[d_mlp, vocab]: each neuron's one-hot through the down projection module, the post-MLP norm
    and the final norm (scales frozen) and the unembedding module, less what zero gives."""
    blocks_of, _, _ = HAND[model.config.model_type]
    block = blocks_of(model)[layer]
    down = {"gpt2": lambda: block.mlp.c_proj, "gpt_neox": lambda: block.mlp.dense_4h_to_h}.get(
        model.config.model_type, lambda: block.mlp.down_proj)()
    d_mlp = down.weight.shape[0] if model.config.model_type == "gpt2" else down.weight.shape[1]
    with torch.no_grad():
        eye = torch.eye(d_mlp)
        writes = down(eye) - down(torch.zeros_like(eye))
        normed = frozen_norm(final_norm, frozen_norm(post_mlp_norm, writes))
        unembed = model.get_output_embeddings()
        return unembed(normed) - unembed(torch.zeros_like(normed))
