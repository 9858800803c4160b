"""The transposed frozen model (``attribution_rows``) gives each target the row autograd gives it
through the frozen forward pass (``replacement.frozen_run``), whatever the batch size and however the
batches are tiled and cut short, and the logits' total gradients autograd gives through the total
run (later MLPs included); its tiling does less work than batching by layer alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.compute.test_attribution import IDS, tiny_gpt2, tiny_llama
from tests.compute.test_attribution_transcoder import random_transcoder
from workers.compute import attribution, attribution_rows, replacement
from workers.compute.graph_basis import layer_bases
from workers.compute.graph_config import GraphConfig


def _autograd_rows(model: Any, frozen: replacement.Frozen, bases: list, units: torch.Tensor,
                   tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Each target's row from its value's gradients on a one-copy frozen forward pass."""
    n_layers, T = len(frozen.acts), len(IDS)
    out = torch.zeros(len(units) + len(tokens), n)
    for target in range(len(units) + len(tokens)):
        run = replacement.frozen_run(model, frozen, 1, total=False, neurons=[not b.transcoder for b in bases])
        index = torch.tensor([target])
        value = attribution._target_values(model, run, bases, units, tokens, index, torch.zeros_like(index))
        grads = torch.autograd.grad(value.sum(), [run.embeds, *run.leaves], allow_unused=True, materialize_grads=True)
        embed_grad, leaf_grads = grads[0][0], [g[0] for g in grads[1:]]
        for layer in range(n_layers):
            out[target, len(units) + layer * T:len(units) + (layer + 1) * T] = (leaf_grads[layer] * frozen.mlp_out[layer]).sum(-1)
        for u, (layer, pos, index_) in enumerate(units.tolist()):
            basis = bases[layer]
            edge = basis.acts[pos, index_] * (leaf_grads[layer][pos] @ basis.directions[index_])
            out[target, u] = edge
            out[target, len(units) + layer * T + pos] -= edge
        start = len(units) + n_layers * T
        out[target, start:start + T] = (embed_grad * frozen.embeds).sum(-1)
    return out


def tiny_neox(parallel: bool) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(4)
    config = GPTNeoXConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=24, max_position_embeddings=32, rotary_pct=0.5,
                           use_parallel_residual=parallel, initializer_range=0.3, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def _model(kind: str) -> Any:
    if kind.startswith("neox"):
        return tiny_neox(parallel=kind == "neox-parallel")
    return tiny_gpt2() if kind == "gpt2" else tiny_llama(seed=2)


def _setup(model: Any, saes: dict[int, Any], max_units: int) -> tuple:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    frozen = replacement.clean_run(model, IDS)
    vocab = replacement.unembed(model).shape[0]
    last = replacement.logits_at(model, frozen.final[-1], torch.arange(vocab))
    config = GraphConfig(max_logits=3, logit_probability=1.0)
    tokens, probs = attribution.pick_targets(last, config)
    bases = layer_bases(model, frozen, saes)
    units, _ = attribution.select_units(model, frozen, bases, tokens, probs, max_units)
    return frozen, bases, units, tokens


@pytest.mark.parametrize("kind", ["llama", "gpt2", "neox-parallel", "llama-transcoders"])
def test_rows_equal_autograd_through_the_frozen_forward_at_any_batch_size(kind: str) -> None:
    model = _model(kind)
    saes = {0: random_transcoder(0, 5), 2: random_transcoder(2, 6)} if kind == "llama-transcoders" else {}
    frozen, bases, units, tokens = _setup(model, saes, 40)
    n = len(units) + len(frozen.acts) * len(IDS) + len(IDS)
    expected = _autograd_rows(model, frozen, bases, units, tokens, n)
    assert expected.abs().max() > 0.1
    for batch_size in (1, 5, 64):
        rows = attribution_rows.transposed_rows(model, frozen, bases, units, tokens, batch_size)
        torch.testing.assert_close(rows[:, :n], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "neox-parallel", "neox"])
def test_total_gradients_equal_autograd_through_the_total_run(kind: str) -> None:
    model = _model(kind)
    frozen, _, _, tokens = _setup(model, {}, 10)
    run = replacement.frozen_run(model, frozen, len(tokens), total=True)
    logits = replacement.logits_at(model, run.final[:, -1], tokens).diagonal()  # copy j: logit j
    expected = torch.autograd.grad(logits.sum(), run.leaves)
    mine = attribution_rows.total_gradients(model, frozen, tokens)
    assert max(float(g.abs().max()) for g in expected) > 0.1
    for layer in range(len(expected)):
        torch.testing.assert_close(mine[layer], expected[layer], atol=1e-5, rtol=1e-4)


def _work(order: torch.Tensor, layer_of: torch.Tensor, pos_of: torch.Tensor, n_layers: int, batch: int) -> int:
    return sum((min(int(layer_of[c].max()), n_layers - 1) + 1) * (int(pos_of[c].max()) + 1)
               for c in order.split(batch))


def test_batches_tile_layers_and_positions_for_less_work_than_layers_alone() -> None:
    # every (layer, position) of a 30-layer, 16-token prompt, 4 units each, and 10 logits at the end
    layer_of = torch.cat([torch.arange(30).repeat_interleave(64), torch.full((10,), 30)])
    pos_of = torch.cat([torch.arange(16).repeat_interleave(4).repeat(30), torch.full((10,), 15)])
    order = attribution_rows.batch_order(layer_of, pos_of, 30, 64)
    assert sorted(order.tolist()) == list(range(len(layer_of)))
    by_layer = torch.sort(layer_of, stable=True).indices
    assert _work(order, layer_of, pos_of, 30, 64) < 0.8 * _work(by_layer, layer_of, pos_of, 30, 64)
