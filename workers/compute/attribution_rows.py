"""Direct-effect rows of an attribution graph by the transposed frozen model, written out.

With attention patterns and norm scales frozen and every MLP output a constant (direct effects), the
model from the token embeddings and MLP outputs to any node's value is linear, and so is its
transpose. A node's row is its value's gradient: one vector injected where the node reads the
residual stream (its linear read-out ``d value / d residual`` at its position), carried down the
residual stream through each layer's transposed attention and norm, and read against each source's
write vector on the way (a unit's decoder direction times its activation, a layer's MLP output for
its error node, the embeddings for the token nodes).

Written out rather than left to autograd, because a batch of targets then needs no forward pass on
copies of the prompt and runs only as deep as its deepest target and as long as its last position
(a causal model: nothing at a later position reaches it); targets are tiled in (layer, position) so
that both bounds stay low. circuit-tracer (0.5) injects the same vectors into autograd's backward pass
of a batch of prompt copies over every position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.compute import replacement
from workers.compute.graph_basis import LayerBasis, unit_values
from workers.compute.graph_scores import Layout

Report = Callable[[int, int, str], None]


@dataclass
class _Attention:
    """One layer's frozen attention as linear maps: v = h @ w_v, z = probs . v, out = z @ w_o."""

    w_v: torch.Tensor  # [d_model, n_kv * head_dim]
    w_o: torch.Tensor  # [n_heads * head_dim, d_model]
    probs_t: torch.Tensor  # [n_kv, T (source), group, T (query)]: the pattern, transposed per kv head
    n_kv: int
    head_dim: int


def _attention(model: Any, layer: Any, probs: torch.Tensor) -> _Attention:
    """The linear part of ``replacement._attend`` (biases are the bias term's) for each architecture."""
    if replacement._gpt2(model):
        attn = layer.attn
        w_v, w_o, n_kv, head_dim = attn.c_attn.weight[:, 2 * attn.embed_dim:], attn.c_proj.weight, attn.num_heads, attn.head_dim
    elif replacement._neox(model):
        attn = layer.attention
        hs = attn.head_size
        qkv = attn.query_key_value.weight  # [n_heads * 3 * hs, d_model], head-major
        n_kv = qkv.shape[0] // (3 * hs)
        w_v = qkv.view(n_kv, 3 * hs, -1)[:, 2 * hs:].reshape(n_kv * hs, -1).T
        w_o, head_dim = attn.dense.weight.T, hs
    else:
        attn = layer.self_attn
        n_heads, n_kv, head_dim = replacement._heads(attn)
        w_v, w_o = attn.v_proj.weight.T, attn.o_proj.weight.T
    n_heads, T = probs.shape[0], probs.shape[1]
    probs_t = probs.view(n_kv, n_heads // n_kv, T, T).permute(0, 3, 1, 2).contiguous()
    return _Attention(w_v.detach(), w_o.detach(), probs_t, n_kv, head_dim)


def _attention_t(attn: _Attention, g: torch.Tensor) -> torch.Tensor:
    """The transposed attention of gradients g [B, P, d_model] at its output -> at its normed input."""
    B, P, _ = g.shape
    groups = attn.w_o.shape[0] // (attn.n_kv * attn.head_dim)
    gz = (g @ attn.w_o.T).view(B, P, attn.n_kv, groups, attn.head_dim)
    gz = gz.permute(2, 3, 1, 0, 4).reshape(attn.n_kv, groups * P, B * attn.head_dim)
    pattern = attn.probs_t[:, :P, :, :P].reshape(attn.n_kv, P, groups * P)
    gv = torch.bmm(pattern, gz).view(attn.n_kv, P, B, attn.head_dim)  # [kv, source, B, head_dim]
    return gv.permute(2, 1, 0, 3).reshape(B, P, -1) @ attn.w_v.T


def _norm_t(norm: Any, coef: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The transposed frozen norm (``replacement._norm``) with ``coef`` = scale x weight [P, d_model]."""
    u = g * coef
    return u - u.mean(-1, keepdim=True) if isinstance(norm, nn.LayerNorm) else u


def _coef(norm: Any, scale: torch.Tensor) -> torch.Tensor:
    return (scale * norm.weight).detach()


def read_vectors(model: Any, frozen: replacement.Frozen, bases: list[LayerBasis], units: torch.Tensor,
                 tokens: torch.Tensor) -> torch.Tensor:
    """[U + k, d_model]: each target's value as a linear function of the residual stream it reads (a
    unit: its layer's MLP input, at its position; a logit: the final residual at the last position)."""
    blocks, n_layers = replacement.layers(model), len(frozen.acts)
    out = frozen.embeds.new_zeros(len(units) + len(tokens), frozen.embeds.shape[1])
    for layer in units[:, 0].unique().tolist():
        rows = (units[:, 0] == layer).nonzero()[:, 0]
        pos = units[rows, 1]
        with torch.enable_grad():
            h = frozen.mlp_in[layer][pos].clone().requires_grad_()  # [m, d_model], one row per target
            computed = h.new_zeros(len(rows), 1, 0)
            if not bases[layer].transcoder:
                computed = (frozen.gates[layer][pos] * replacement._mlp_linear(model, blocks[layer], h))[:, None]
            one = torch.stack([units[rows, 0], torch.zeros_like(pos), units[rows, 2]], 1)
            values = unit_values(bases, [computed] * n_layers, one, [h[:, None]] * n_layers,
                                 torch.arange(len(rows), device=rows.device))
            (grad,) = torch.autograd.grad(values.sum(), h)
        mlp_norm = replacement._norms(model, blocks[layer])[1]
        out[rows] = _norm_t(mlp_norm, _coef(mlp_norm, frozen.mlp_scale[layer][pos]), grad)
    final = replacement._final_norm(model)
    head = replacement.unembed(model)[tokens]  # [k, d_model]
    out[len(units):] = _norm_t(final, _coef(final, frozen.final_scale[-1:]), head)
    return out


def batch_order(layer_of: torch.Tensor, pos_of: torch.Tensor, n_layers: int, batch_size: int) -> torch.Tensor:
    """The targets in batches of ``batch_size`` that keep the work low: a batch costs about its deepest
    layer times its last position. Targets go by position blocks, by layer within one; the block
    size with the least estimated work is taken (the whole prompt as one block: by layer alone)."""
    n_pos = int(pos_of.max()) + 1
    best, best_cost = layer_of, None
    block = 1
    while True:
        key = ((pos_of // block) * (n_layers + 1) + layer_of) * n_pos + pos_of
        order = torch.sort(key, stable=True).indices
        cost = 0
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            cost += (min(int(layer_of[chunk].max()), n_layers - 1) + 1) * (int(pos_of[chunk].max()) + 1)
        if best_cost is None or cost < best_cost:
            best, best_cost = order, cost
        if block >= n_pos:
            return best
        block *= 2


@dataclass
class _Model:
    """What the transposed pass reads per layer: norms, their frozen coefficients, attention maps."""

    attn_norms: list[Any]
    attn_coef: list[torch.Tensor]  # [T, d_model]
    attention: list[_Attention]
    parallel: list[bool]

    @classmethod
    def of(cls, model: Any, frozen: replacement.Frozen) -> _Model:
        blocks = list(replacement.layers(model))
        norms = [replacement._norms(model, block)[0] for block in blocks]
        return cls(norms, [_coef(norm, scale) for norm, scale in zip(norms, frozen.attn_scale, strict=True)],
                   [_attention(model, block, probs) for block, probs in zip(blocks, frozen.probs, strict=True)],
                   [replacement._parallel(model, block) for block in blocks])


@dataclass
class _Sources:
    """The write vectors rows are read against: the selected units' directions times activations
    (grouped by layer), each layer's MLP output and the embeddings."""

    units: torch.Tensor  # [U, 3]
    writes: list[torch.Tensor]  # per layer [n_l, d_model]: direction x activation of its selected units
    in_layer: list[torch.Tensor]  # per layer, the indices of its selected units
    mlp_out: list[torch.Tensor]  # [T, d_model] per layer
    embeds: torch.Tensor  # [T, d_model]

    @classmethod
    def of(cls, frozen: replacement.Frozen, bases: list[LayerBasis], units: torch.Tensor) -> _Sources:
        in_layer = [(units[:, 0] == layer).nonzero()[:, 0] for layer in range(len(bases))]
        writes = [bases[layer].directions[units[rows, 2]] * bases[layer].acts[units[rows, 1], units[rows, 2]][:, None]
                  for layer, rows in enumerate(in_layer)]
        return cls(units, writes, in_layer, frozen.mlp_out, frozen.embeds)


def _read(rows: torch.Tensor, g: torch.Tensor, layer: int, sources: _Sources, layout: Layout) -> None:
    """Add to the batch's ``rows`` [B, n] the edges from layer ``layer``'s units and error node, given
    the gradients g [B, P, d_model] at what that layer's MLP writes. The error node gets the whole MLP
    output's effect minus its selected units'."""
    B, P, _ = g.shape
    n_pos = layout.tokens
    errors = (g * sources.mlp_out[layer][:P]).sum(-1)  # [B, P]
    here = sources.in_layer[layer]
    if len(here):
        pos = sources.units[here, 1]
        live = pos < P
        here, pos = here[live], pos[live]
        if len(here):
            cols = (g.reshape(B * P, -1) @ sources.writes[layer][live].T).view(B, P, -1)
            unit_cols = cols[:, pos, torch.arange(len(here), device=pos.device)]  # [B, m]
            rows[:, here] = unit_cols
            errors = errors.index_add(1, pos, -unit_cols)
    start = layout.units + layer * n_pos
    rows[:, start:start + P] = errors


Injection = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _injections(targets: torch.Tensor, layer_of: torch.Tensor, pos_of: torch.Tensor, reads: torch.Tensor
                ) -> dict[int, Injection]:
    """Per layer, (batch rows, positions, read vectors) of the batch's targets at that layer."""
    where = torch.arange(len(targets), device=targets.device)
    layers = layer_of[targets]
    out = {}
    for layer in layers.unique().tolist():
        mask = layers == layer
        out[layer] = (where[mask], pos_of[targets[mask]], reads[targets[mask]])
    return out


def _inject(g: torch.Tensor, injection: Injection | None) -> None:
    if injection is not None:
        rows, pos, vectors = injection
        g.index_put_((rows, pos), vectors, accumulate=True)


def transposed_rows(model: Any, frozen: replacement.Frozen, bases: list[LayerBasis], units: torch.Tensor,
                    tokens: torch.Tensor, batch_size: int, report: Report | None = None) -> torch.Tensor:
    """[U + k, n]: the adjacency rows of the units, then of the logits ``tokens``."""
    n_layers, n_pos = len(frozen.acts), frozen.embeds.shape[0]
    layout = Layout(units=len(units), errors=n_layers * n_pos, tokens=n_pos, logits=len(tokens))
    n_targets = len(units) + len(tokens)
    reads = read_vectors(model, frozen, bases, units, tokens)
    layer_of = torch.cat([units[:, 0], units.new_full((len(tokens),), n_layers)])
    pos_of = torch.cat([units[:, 1], units.new_full((len(tokens),), n_pos - 1)])
    frozen_model, sources = _Model.of(model, frozen), _Sources.of(frozen, bases, units)
    out = frozen.embeds.new_zeros(n_targets, layout.size)
    order = batch_order(layer_of, pos_of, n_layers, batch_size)
    for start in range(0, n_targets, batch_size):
        targets = order[start:start + batch_size]
        deepest, P = int(layer_of[targets].max()), int(pos_of[targets].max()) + 1
        g = frozen.embeds.new_zeros(len(targets), P, frozen.embeds.shape[1])
        rows = out.new_zeros(len(targets), layout.size)
        injections = _injections(targets, layer_of, pos_of, reads)
        for layer in range(deepest, -1, -1):
            if layer == n_layers:  # the logits read the final residual stream
                _inject(g, injections.get(layer))
                continue
            if layer < deepest:
                _read(rows, g, layer, sources, layout)
            if not frozen_model.parallel[layer]:
                _inject(g, injections.get(layer))  # a unit reads the residual stream after its layer's attention
            g = g + _norm_t(frozen_model.attn_norms[layer], frozen_model.attn_coef[layer][:P],
                            _attention_t(frozen_model.attention[layer], g))
            if frozen_model.parallel[layer]:
                _inject(g, injections.get(layer))  # ... or, in a parallel block, the block's input
        tok = layout.units + layout.errors
        rows[:, tok:tok + P] = (g * sources.embeds[:P]).sum(-1)
        out[targets] = rows
        if report is not None:
            report(min(start + batch_size, n_targets), n_targets, "edges")
    return out


def _up(model: Any, block: Any) -> torch.Tensor:
    """[d_model, d_mlp]: the MLP's linear branch as a matrix (``replacement._mlp_linear`` less its bias)."""
    if replacement._neox(model):
        return block.mlp.dense_h_to_4h.weight.T
    return block.mlp.c_fc.weight if replacement._gpt2(model) else block.mlp.up_proj.weight.T


def total_gradients(model: Any, frozen: replacement.Frozen, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, [k, T, d_model]: the gradient of logit j (row j) at what that layer's MLP writes,
    through the whole frozen model (later MLPs included, their neurons' gates frozen): the transposed
    model of ``replacement.frozen_run(total=True)``, all ``tokens`` in one pass."""
    n_layers, n_pos = len(frozen.acts), frozen.embeds.shape[0]
    frozen_model = _Model.of(model, frozen)
    blocks = list(replacement.layers(model))
    empty = tokens.new_zeros(0, 3)
    g = frozen.embeds.new_zeros(len(tokens), n_pos, frozen.embeds.shape[1])
    g[:, -1] = read_vectors(model, frozen, [], empty, tokens)
    out: list[torch.Tensor] = [g] * n_layers
    for layer in range(n_layers - 1, -1, -1):
        out[layer] = g
        mlp_norm = replacement._norms(model, blocks[layer])[1]
        down, _ = replacement.down(model, blocks[layer])

        def mlp_t(grad: torch.Tensor, layer: int = layer, mlp_norm: Any = mlp_norm, down: torch.Tensor = down) -> torch.Tensor:
            pre = ((grad @ down.T) * frozen.gates[layer]) @ _up(model, blocks[layer]).T
            return _norm_t(mlp_norm, _coef(mlp_norm, frozen.mlp_scale[layer]), pre)

        def attn_t(grad: torch.Tensor, layer: int = layer) -> torch.Tensor:
            return _norm_t(frozen_model.attn_norms[layer], frozen_model.attn_coef[layer],
                           _attention_t(frozen_model.attention[layer], grad))

        if frozen_model.parallel[layer]:
            g = g + attn_t(g) + mlp_t(g)
        else:
            g = g + mlp_t(g)
            g = g + attn_t(g)
    return out
