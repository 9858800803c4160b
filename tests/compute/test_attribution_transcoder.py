"""Attribution graphs in the transcoder basis on a tiny seeded LLaMA: each node's pre-activation equals
its incoming edges plus its bias terms plus the error nodes' edges; feature values equal the
transcoder's own encoding of the MLP input that Hugging Face's forward pass hands the MLP; sampled
edges equal a hand propagation through the frozen attention (tests/compute/test_attribution.py)."""

from __future__ import annotations

import pytest
import torch

from tests.compute.test_attribution import IDS, HandModel, _rows_and_values, tiny_llama
from workers.compute import hooks
from workers.compute.attribution import GraphConfig, build_graph
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes

D_MODEL, D_TC = 16, 48


def random_transcoder(layer: int, seed: int, skip: bool = True) -> SparseAutoencoder:
    cfg = SaeConfig(architecture="topk", d_in=D_MODEL, d_sae=D_TC, k=6, apply_b_dec_to_input=False,
                    hook_name=f"blocks.{layer}.mlp.hook_in", transcoder=True, skip=skip)
    g = torch.Generator().manual_seed(seed)
    tensors = {name: torch.randn(shape, generator=g) / 4 for name, shape in tensor_shapes(cfg).items()}
    return SparseAutoencoder(cfg, tensors)


def _mlp_inputs(model: object, layers: list[int]) -> dict[int, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    names = [f"blocks.{i}.mlp.hook_in" for i in layers]
    with hooks.capture(model, hooks.architecture_for("llama"), names, 3,  # type: ignore[arg-type]
                       lambda name, t: seen.__setitem__(name, t[0].clone())):
        hooks.forward(model, IDS[None], torch.ones(1, len(IDS), dtype=torch.long))  # type: ignore[arg-type]
    return {i: seen[f"blocks.{i}.mlp.hook_in"] for i in layers}


def test_transcoder_basis_rows_are_exact_and_features_are_the_transcoders_own() -> None:
    model = tiny_llama()
    tcs = {0: random_transcoder(0, seed=1), 1: random_transcoder(1, seed=2, skip=False)}
    config = GraphConfig(basis="transcoder", saes=((0, "tc-0"), (1, "tc-1")), max_units=60, batch_size=16)
    graph = build_graph(model, IDS, config, saes=tcs)
    sums, values = _rows_and_values(graph)
    assert values.abs().max() > 0.1
    torch.testing.assert_close(sums, values, atol=1e-5, rtol=1e-4)
    inputs = _mlp_inputs(model, [0, 1])
    features = {i: tc.encode(inputs[i]) for i, tc in tcs.items()}  # [T, 48]: from the transcoder module
    seen_layers = set()
    for k, (layer, pos, index) in enumerate(graph.units.tolist()):
        if layer in tcs:
            seen_layers.add(layer)
            assert float(features[layer][pos, index]) > 0
            assert float(graph.values[k]) == pytest.approx(float(features[layer][pos, index]), abs=1e-5)
    assert seen_layers == {0, 1}
    assert any(layer == 2 for layer, _, _ in graph.units.tolist())  # neurons on the layer without one
    # Error nodes carry what the features do not: the transcoders' errors are not small here.
    errors = graph.adjacency[:, graph.layout.units: graph.layout.units + graph.layout.errors]
    assert errors.abs().max() > 1e-3


def test_transcoder_feature_edges_equal_a_hand_propagation() -> None:
    model = tiny_llama(seed=1)
    tc = random_transcoder(1, seed=3)
    graph = build_graph(model, IDS, GraphConfig(basis="transcoder", saes=((1, "tc"),), max_units=40, batch_size=8),
                        saes={1: tc})
    hand = HandModel(model, IDS)
    units = graph.units.tolist()
    token_start = graph.layout.units + graph.layout.errors
    checked = 0
    for row, (layer, pos, index) in enumerate(units):
        if layer != 1:
            continue
        # Into a transcoder feature: each token's embedding, through attention 0 and 1 and the MLP's norm.
        for source_pos in range(len(IDS)):
            d = torch.zeros(len(IDS), D_MODEL)
            with torch.no_grad():
                d[source_pos] = model.model.embed_tokens.weight[IDS[source_pos]]
                for i in (0, 1):
                    d = d + hand._attention(i, d)
                normed = hand._normed(("mlp", 1), model.model.layers[1].post_attention_layernorm, d)
                expected = float(normed[pos] @ tc.W_enc[:, index])
            assert float(graph.adjacency[row, token_start + source_pos]) == pytest.approx(expected, abs=1e-5, rel=1e-4)
            checked += 1
        # Out of it, to each target logit: its decoder row times its activation, through attention 2 and the final norm.
        for j, token in enumerate(graph.logit_tokens.tolist()):
            d = torch.zeros(len(IDS), D_MODEL)
            with torch.no_grad():
                d[pos] = graph.values[row] * tc.W_dec[index]
            expected = hand.effect(2, d, ("logit", token, 0, 0))
            target = graph.layout.size - graph.layout.logits + j
            assert float(graph.adjacency[target, row]) == pytest.approx(expected, abs=1e-5, rel=1e-4)
            checked += 1
    assert checked > 20


def test_transcoder_basis_bad_input() -> None:
    model = tiny_llama()
    config = GraphConfig(basis="transcoder", saes=((1, "tc"),))
    with pytest.raises(ValueError, match="needs a transcoder on the mlp.hook_in"):
        build_graph(model, IDS, config)
    sae = SparseAutoencoder(SaeConfig(architecture="topk", d_in=24, d_sae=8, k=2, hook_name="blocks.1.mlp.hook_post"))
    with pytest.raises(ValueError, match="layer 1 has an SAE"):
        build_graph(model, IDS, config, saes={1: sae})
    with pytest.raises(ValueError, match="layer 1 has a transcoder"):
        build_graph(model, IDS, GraphConfig(basis="sae", saes=((1, "s"),)), saes={1: random_transcoder(1, 0)})
    wide = SparseAutoencoder(SaeConfig(architecture="topk", d_in=20, d_sae=8, k=2, apply_b_dec_to_input=False,
                                       hook_name="blocks.1.mlp.hook_in", transcoder=True))
    with pytest.raises(ValueError, match="maps 20 values to 20, not the MLP's input and output \\(16 each\\)"):
        build_graph(model, IDS, config, saes={1: wide})
    with pytest.raises(ValueError, match="reads blocks.0.mlp.hook_in, not blocks.1.mlp.hook_in"):
        build_graph(model, IDS, config, saes={1: random_transcoder(0, 0)})
