"""Attribution graphs on tiny seeded LLaMA models, against references written from the model's own
modules: HF's logits and hooked activations, its eager attention patterns, and a hand propagation of
each sampled edge through the frozen attention of the layers in between."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fixtures.tiny_sae import random_sae
from workers.compute import attribution, hooks, replacement
from workers.compute.attribution import GraphConfig, build_graph
from workers.compute.graph_scores import prune

IDS = torch.tensor([1, 7, 3, 22, 9, 14, 5])


def tiny_llama(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
                         initializer_range=0.4, tie_word_embeddings=False,
                         attn_implementation="eager")  # type: ignore[call-arg]  # a PretrainedConfig keyword
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms that are not all ones, so a missed weight shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return model


def test_clean_run_reproduces_the_model() -> None:
    model = tiny_llama()
    frozen = replacement.clean_run(model, IDS)
    with torch.no_grad():
        logits = model(IDS[None]).logits[0]
    mine = replacement.logits_at(model, frozen.final, torch.arange(40))
    torch.testing.assert_close(mine, logits, atol=1e-5, rtol=1e-5)
    arch = hooks.architecture_for("llama")
    seen: dict[str, torch.Tensor] = {}
    names = [f"blocks.{i}.mlp.hook_post" for i in range(3)]
    with hooks.capture(model, arch, names, 3, lambda name, t: seen.__setitem__(name, t[0].clone())):
        hooks.forward(model, IDS[None], torch.ones(1, len(IDS), dtype=torch.long))
    for i, name in enumerate(names):
        torch.testing.assert_close(frozen.acts[i], seen[name], atol=1e-5, rtol=1e-5)


def _rows_and_values(graph: attribution.AttributionGraph) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = graph.layout.size, graph.layout.logits
    targets = torch.cat([torch.arange(graph.layout.units), torch.arange(n - k, n)])
    return graph.adjacency[targets].sum(1) + graph.bias[targets], graph.values[targets]


def test_incoming_edges_sum_to_each_node_value() -> None:
    model = tiny_llama()
    graph = build_graph(model, IDS, GraphConfig(max_units=60, batch_size=16))
    assert graph.layout.units == 60
    sums, values = _rows_and_values(graph)
    assert values.abs().max() > 0.1
    torch.testing.assert_close(sums, values, atol=1e-5, rtol=1e-4)
    # The node values are the clean run's own: the replacement changes nothing on this prompt.
    frozen = replacement.clean_run(model, IDS)
    for (layer, pos, index), value in zip(graph.units.tolist(), graph.values[:60], strict=True):
        assert float(value) == pytest.approx(float(frozen.acts[layer][pos, index]), abs=1e-5)


class HandModel:
    """What the frozen model fixes, read from HF's eager forward (hooks and output_attentions), and
    a direct effect propagated by hand through the attention of each layer in between."""

    def __init__(self, model: Any, ids: torch.Tensor) -> None:
        self.model = model
        self.inputs: dict[tuple[str, int], torch.Tensor] = {}
        self.gates: dict[int, torch.Tensor] = {}
        handles = []
        for i, layer in enumerate(model.model.layers):
            for key, module in ((("attn", i), layer.input_layernorm), (("mlp", i), layer.post_attention_layernorm)):
                handles.append(module.register_forward_hook(self._keep(key)))
            handles.append(layer.mlp.act_fn.register_forward_hook(
                lambda m, a, out, i=i: self.gates.__setitem__(i, out[0].detach())))
        handles.append(model.model.norm.register_forward_hook(self._keep(("final", 0))))
        with torch.no_grad():
            out = model(ids[None], output_attentions=True)
        for handle in handles:
            handle.remove()
        self.probs = [a[0] for a in out.attentions]
        self.logits = out.logits[0]

    def _keep(self, key: tuple[str, int]) -> Any:
        return lambda module, args, out: self.inputs.__setitem__(key, args[0][0].detach())

    def _normed(self, key: tuple[str, int], norm: Any, d: torch.Tensor) -> torch.Tensor:
        x = self.inputs[key]
        return d * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight

    def _attention(self, i: int, d: torch.Tensor) -> torch.Tensor:
        layer = self.model.model.layers[i]
        attn = layer.self_attn
        h = self._normed(("attn", i), layer.input_layernorm, d)
        v = attn.v_proj(h).view(len(d), -1, attn.head_dim)  # [T, H_kv, dh]
        heads = self.probs[i].shape[0]
        group = heads // v.shape[1]
        out = torch.cat([self.probs[i][head] @ v[:, head // group] for head in range(heads)], -1)
        return attn.o_proj(out)

    def effect(self, start: int, d: torch.Tensor, target: tuple[str, int, int, int]) -> float:
        """Direct effect of the delta ``d`` [T, d_model] written to the residual stream before layer
        ``start`` on ``target``: ("unit", layer, pos, index) or ("logit", token, 0, 0)."""
        kind, a, b, c = target
        last = a if kind == "unit" else len(self.model.model.layers) - 1
        with torch.no_grad():
            for i in range(start, last + 1):
                d = d + self._attention(i, d)
            if kind == "logit":
                final = self._normed(("final", 0), self.model.model.norm, d)
                return float(self.model.lm_head.weight[a] @ final[-1])
            layer = self.model.model.layers[a]
            h = self._normed(("mlp", a), layer.post_attention_layernorm, d)
            return float(self.gates[a][b, c] * (layer.mlp.up_proj.weight[c] @ h[b]))


def test_sampled_edges_equal_a_hand_propagation() -> None:
    model = tiny_llama(seed=1)
    graph = build_graph(model, IDS, GraphConfig(max_units=40, batch_size=8))
    hand = HandModel(model, IDS)
    torch.testing.assert_close(hand.logits[-1, graph.logit_tokens], graph.values[-graph.layout.logits:],
                               atol=1e-5, rtol=1e-5)
    units = graph.units.tolist()
    token_start = graph.layout.units + graph.layout.errors
    T, checked = len(IDS), 0
    generator = torch.Generator().manual_seed(0)
    targets = [("unit", *u) for u in units] + [("logit", int(t), 0, 0) for t in graph.logit_tokens]
    for row in torch.randperm(len(targets), generator=generator)[:12].tolist():
        target = targets[row]
        row_index = row if row < len(units) else graph.layout.size - graph.layout.logits + row - len(units)
        for col, (layer, pos, index) in enumerate(units):
            if graph.adjacency[row_index, col] == 0 and not (target[0] == "logit" or layer < target[1]):
                continue  # a later or same-layer neuron: no direct path, and the graph has none
            d = torch.zeros(T, 16)
            with torch.no_grad():
                d[pos] = graph.values[col] * model.model.layers[layer].mlp.down_proj.weight[:, index]
            expected = hand.effect(layer + 1, d, target) if target[0] == "logit" or layer < target[1] else 0.0
            assert float(graph.adjacency[row_index, col]) == pytest.approx(expected, abs=1e-5, rel=1e-4)
            checked += 1
        for pos in range(T):
            d = torch.zeros(T, 16)
            with torch.no_grad():
                d[pos] = model.model.embed_tokens.weight[IDS[pos]]
            expected = hand.effect(0, d, target)
            assert float(graph.adjacency[row_index, token_start + pos]) == pytest.approx(expected, abs=1e-5, rel=1e-4)
    assert checked > 100


def planted_llama() -> Any:
    """Token 1 drives neuron 0 of layer 0 (it reads e0, writes e1), which drives neuron 1 of layer 1
    (reads e1, writes e2), which drives the logit of token 5 (reads e2). Attention writes nothing;
    the other tokens embed to e3, which nothing reads."""
    config = LlamaConfig(vocab_size=6, hidden_size=8, intermediate_size=4, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=16,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    eye = torch.eye(8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.ones_like(param) if "norm" in name else torch.zeros_like(param))
        model.model.layers[0].self_attn.v_proj.weight.normal_()  # values read, but o_proj writes nothing
        model.model.embed_tokens.weight[:] = 4 * eye[3]
        model.model.embed_tokens.weight[1] = 4 * eye[0]
        for layer, neuron, reads, writes in ((0, 0, 0, 1), (1, 1, 1, 2)):
            mlp = model.model.layers[layer].mlp
            mlp.gate_proj.weight[neuron] = 3 * eye[reads]
            mlp.up_proj.weight[neuron] = eye[reads]
            mlp.down_proj.weight[:, neuron] = 2 * eye[writes]
        model.lm_head.weight[5] = 8 * eye[2]
    return model


def test_planted_circuit_is_exactly_that_path() -> None:
    model = planted_llama()
    ids = torch.tensor([2, 3, 4, 1])
    graph = build_graph(model, ids, GraphConfig(max_units=8))
    assert graph.logit_tokens.tolist() == [5]
    assert graph.units.tolist() in ([[1, 3, 1], [0, 3, 0]], [[0, 3, 0], [1, 3, 1]])
    names = {0: "A", 1: "B"} if graph.units[0, 0] == 0 else {0: "B", 1: "A"}
    token_last = graph.layout.units + graph.layout.errors + 3
    names[token_last] = "token"
    names[graph.layout.size - 1] = "logit"
    adjacency = graph.adjacency
    edges = {(names[s], names[t]) for t, s in (adjacency.abs() > 1e-6 * adjacency.abs().max()).nonzero().tolist()}
    assert edges == {("token", "A"), ("A", "B"), ("B", "logit")}
    pruned = prune(adjacency, graph.layout, graph.logit_probs)
    kept_units = graph.units[pruned.node_mask[: graph.layout.units]].tolist()
    assert sorted(kept_units) == [[0, 3, 0], [1, 3, 1]]
    assert int(pruned.edge_mask.sum()) == 3


def test_bad_input() -> None:
    model = tiny_llama()
    with pytest.raises(ValueError, match="vocabulary size 40"):
        build_graph(model, IDS, GraphConfig(target_tokens=(40,)))
    with pytest.raises(ValueError, match="unknown graph settings: colour"):
        GraphConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="no attribution graphs yet"):
        build_graph(model, IDS, GraphConfig(basis="clt"))
    with pytest.raises(ValueError, match="names its SAEs"):
        build_graph(model, IDS, GraphConfig(basis="sae"))
    with pytest.raises(ValueError, match="needs an SAE"):
        build_graph(model, IDS, GraphConfig(basis="sae", saes=((1, "s"),)))
    with pytest.raises(ValueError, match="reads 10 values"):
        build_graph(model, IDS, GraphConfig(basis="sae", saes=((1, "s"),)), saes={1: random_sae(10, 8)})
    model.config.model_type = "bert"
    with pytest.raises(replacement.ReplacementError, match="causal decoder"):
        build_graph(model, IDS, GraphConfig())


def test_config_round_trips_and_hash_depends_on_prompt() -> None:
    config = GraphConfig(target_tokens=(3, 4), max_units=12)
    assert GraphConfig.from_dict(config.to_dict()) == config
    assert config.hash(model="m", prompt="a b") != config.hash(model="m", prompt="a c")
    assert config.hash(model="m", prompt="a") == GraphConfig.from_dict(config.to_dict()).hash(model="m", prompt="a")


def tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    config = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=3, n_head=4, n_inner=24,
                        initializer_range=0.3, attn_implementation="eager")  # type: ignore[call-arg]
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and norm weights that are not zeros and ones
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    return model


def test_gpt2_clean_run_and_exact_rows_with_biases() -> None:
    model = tiny_gpt2()
    frozen = replacement.clean_run(model, IDS)
    with torch.no_grad():
        logits = model(IDS[None]).logits[0]
    torch.testing.assert_close(replacement.logits_at(model, frozen.final, torch.arange(40)), logits,
                               atol=1e-5, rtol=1e-5)
    arch = hooks.architecture_for("gpt2")
    seen: dict[str, torch.Tensor] = {}
    names = [f"blocks.{i}.mlp.hook_post" for i in range(3)]
    with hooks.capture(model, arch, names, 3, lambda name, t: seen.__setitem__(name, t[0].clone())):
        hooks.forward(model, IDS[None], torch.ones(1, len(IDS), dtype=torch.long))
    for i, name in enumerate(names):
        torch.testing.assert_close(frozen.acts[i], seen[name], atol=1e-5, rtol=1e-5)
    graph = build_graph(model, IDS, GraphConfig(max_units=50, batch_size=16))
    sums, values = _rows_and_values(graph)
    torch.testing.assert_close(sums, values, atol=1e-4, rtol=1e-4)
    assert graph.bias.abs().max() > 0.05  # the biases carry part of every value, and the rows account for it


def test_sae_basis_features_are_the_saes_own_and_rows_stay_exact() -> None:
    model = tiny_llama()
    sae = random_sae(24, 40, k=5, seed=2, hook_name="blocks.1.mlp.hook_post")
    config = GraphConfig(basis="sae", saes=((1, "sae-1"),), max_units=60, batch_size=16)
    graph = build_graph(model, IDS, config, saes={1: sae})
    sums, values = _rows_and_values(graph)
    torch.testing.assert_close(sums, values, atol=1e-5, rtol=1e-4)
    arch = hooks.architecture_for("llama")
    seen: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, ["blocks.1.mlp.hook_post"], 3, lambda name, t: seen.__setitem__(name, t[0].clone())):
        hooks.forward(model, IDS[None], torch.ones(1, len(IDS), dtype=torch.long))
    features = sae.encode(seen["blocks.1.mlp.hook_post"])  # [T, 40]: the reference, from the SAE module
    layer_one = [(k, pos, index) for k, (layer, pos, index) in enumerate(graph.units.tolist()) if layer == 1]
    assert layer_one, "no feature was selected"
    for k, pos, index in layer_one:
        assert index < 40 and float(features[pos, index]) > 0
        assert float(graph.values[k]) == pytest.approx(float(features[pos, index]), abs=1e-5)
    assert any(layer != 1 for layer, _, _ in graph.units.tolist())  # neurons on the other layers


def test_zero_ablation_check_in_the_planted_circuit() -> None:
    from workers.compute.graph_check import zero_ablation_check

    model = planted_llama()
    ids = torch.tensor([2, 3, 4, 1])
    graph = build_graph(model, ids, GraphConfig(max_units=8))
    b_row = [i for i, unit in enumerate(graph.units.tolist()) if unit == [1, 3, 1]][0]
    edge_b_to_logit = float(graph.adjacency[-1, b_row])
    check = zero_ablation_check(model, ids, [(1, 3, 1)], 5)
    # B reaches the logit only directly: the prediction is minus that edge.
    assert check.predicted == pytest.approx(-edge_b_to_logit, rel=1e-5)
    # The real change, from a plain hook that zeroes B's activation before the down projection.
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda module, args: (args[0].index_put((torch.tensor([0]), torch.tensor([3]), torch.tensor([1])),
                                                torch.tensor(0.0)),))
    with torch.no_grad():
        zeroed = float(model(ids[None]).logits[0, -1, 5])
    handle.remove()
    assert check.clean == pytest.approx(float(graph.values[-1]), rel=1e-5)
    assert check.real == pytest.approx(zeroed - check.clean, rel=1e-5)
    assert check.real < 0 and check.predicted < 0


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_clean_run_and_exact_rows(parallel: bool) -> None:
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
    frozen = replacement.clean_run(model, IDS)
    with torch.no_grad():
        logits = model(IDS[None]).logits[0]
    torch.testing.assert_close(replacement.logits_at(model, frozen.final, torch.arange(40)), logits,
                               atol=1e-5, rtol=1e-5)
    graph = build_graph(model, IDS, GraphConfig(max_units=50, batch_size=16))
    sums, values = _rows_and_values(graph)
    torch.testing.assert_close(sums, values, atol=1e-4, rtol=1e-4)
    assert graph.bias.abs().max() > 0.05
