"""The causal check of graph nodes on tiny seeded models with a planted circuit (token -> neuron A
-> neuron B -> logit of token 5): where the replacement model is exact (norms linear to float
precision, B's gate reading the token only) the predicted change of the target logit equals the
real one for every edit, alone and together; each real change is checked against plain hooks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workers.compute.attribution import GraphConfig, build_graph
from workers.compute.graph_check import node_check, zero_ablation_check

IDS = torch.tensor([2, 3, 4, 1])
A, B = (0, 3, 0), (1, 3, 1)  # (layer, position, neuron)
EPS = 1e12  # RMSNorm x * w / sqrt(mean(x^2) + eps) with w = sqrt(eps): x to a relative 1e-6


def linear_planted_llama() -> Any:
    """Token 1 embeds to 4 e0. Neuron A (layer 0) = silu(3 x0) * x0, writes 2 A e1; neuron B
    (layer 1) = silu(3 x0) * x1 (its gate reads the token only), writes 2 B e2; logit 5 reads 8 e2.
    Attention writes nothing; every norm is linear (its eps dwarfs mean(x^2)), so the frozen
    replacement model is the model itself."""
    config = LlamaConfig(vocab_size=6, hidden_size=8, intermediate_size=4, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=16,
                         tie_word_embeddings=False, rms_norm_eps=EPS)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    eye = torch.eye(8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.full_like(param, EPS ** 0.5) if "norm" in name else torch.zeros_like(param))
        model.model.layers[0].self_attn.v_proj.weight.normal_()  # values read, but o_proj writes nothing
        model.model.embed_tokens.weight[:] = 4 * eye[3]
        model.model.embed_tokens.weight[1] = 4 * eye[0]
        for layer, neuron, gate, up, writes in ((0, 0, 0, 0, 1), (1, 1, 0, 1, 2)):
            mlp = model.model.layers[layer].mlp
            mlp.gate_proj.weight[neuron] = 3 * eye[gate]
            mlp.up_proj.weight[neuron] = eye[up]
            mlp.down_proj.weight[:, neuron] = 2 * eye[writes]
        model.lm_head.weight[5] = 8 * eye[2]
    return model


def hooked_logit(model: Any, edits: dict[tuple[int, int, int], Any]) -> float:
    """The logit of token 5 with neuron activations replaced by plain hooks on the down projections
    (``edits``: unit -> function of its activation)."""
    handles = []
    for layer in (0, 1):
        mine = {(pos, index): f for (lay, pos, index), f in edits.items() if lay == layer}

        def hook(module: Any, args: Any, mine: dict[tuple[int, int], Any] = mine) -> Any:
            x = args[0].clone()
            for (pos, index), f in mine.items():
                x[0, pos, index] = f(x[0, pos, index])
            return (x,)

        handles.append(model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            return float(model(IDS[None]).logits[0, -1, 5])
    finally:
        for handle in handles:
            handle.remove()


def test_the_planted_model_is_linear_where_it_should_be() -> None:
    model = linear_planted_llama()
    graph = build_graph(model, IDS, GraphConfig(max_units=8))
    assert graph.logit_tokens.tolist() == [5]
    assert sorted(graph.units.tolist()) == [list(A), list(B)]
    clean = hooked_logit(model, {})
    # Halving A halves B (its up branch) and so the logit: the model is linear along the path.
    assert hooked_logit(model, {A: lambda a: a / 2}) == pytest.approx(clean / 2, rel=1e-5)


@pytest.mark.parametrize(("units", "op", "value", "hooked"), [
    ([A], "zero", 0.0, {A: lambda a: 0 * a}),
    ([B], "zero", 0.0, {B: lambda a: 0 * a}),
    ([A, B], "zero", 0.0, {A: lambda a: 0 * a, B: lambda a: 0 * a}),
    ([A], "scale", 0.25, {A: lambda a: 0.25 * a}),
    ([A, B], "scale", 2.0, {A: lambda a: 2 * a, B: lambda a: 2 * a}),
    ([B], "clamp", 5.0, {B: lambda a: 0 * a + 5}),
    ([A, B], "clamp", 5.0, {A: lambda a: 0 * a + 5, B: lambda a: 0 * a + 5}),
    ([A], "steer", -3.0, {A: lambda a: a - 3}),
    ([A, B], "steer", 7.0, {A: lambda a: a + 7, B: lambda a: a + 7}),
])
def test_predicted_change_equals_the_real_one_where_the_replacement_is_exact(
        units: list[tuple[int, int, int]], op: str, value: float, hooked: dict[Any, Any]) -> None:
    model = linear_planted_llama()
    check = node_check(model, IDS, units, 5, op=op, value=value)
    clean = hooked_logit(model, {})
    assert check.clean == pytest.approx(clean, rel=1e-6)
    real = hooked_logit(model, hooked) - clean  # the reference: plain hooks, applied in layer order
    assert abs(real) > 1.0  # every edit here moves the logit
    assert check.real == pytest.approx(real, rel=1e-5)
    assert check.predicted == pytest.approx(real, rel=1e-4)
    assert sum(check.terms) == pytest.approx(check.predicted) and len(check.terms) == len(units)


def test_ablating_both_units_of_a_path_does_not_count_it_twice() -> None:
    model = linear_planted_llama()
    both = zero_ablation_check(model, IDS, [A, B], 5)
    alone = [zero_ablation_check(model, IDS, [unit], 5) for unit in (A, B)]
    # A acts only through B: with B gone, ablating A as well changes nothing more.
    assert both.predicted == pytest.approx(alone[1].predicted, rel=1e-5)
    assert both.real == pytest.approx(alone[1].real, rel=1e-5)
    assert alone[0].predicted + alone[1].predicted != pytest.approx(both.predicted, rel=1e-2)


def test_bad_edits_are_refused() -> None:
    model = linear_planted_llama()
    for op, value, message in (("mean", 0.0, "unknown edit"), ("scale", float("nan"), "finite"),
                               ("steer", 1e9, "within")):
        with pytest.raises(ValueError, match=message):
            node_check(model, IDS, [A], 5, op=op, value=value)
    with pytest.raises(ValueError, match="named twice"):
        node_check(model, IDS, [A, A], 5)

