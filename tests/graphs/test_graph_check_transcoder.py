"""The causal check of transcoder nodes on the planted circuit of ``test_graph_check`` (token ->
neuron A -> neuron B -> logit of token 5, every norm linear): a transcoder on layer 0 whose feature
reads the token and writes along A's output, and one on layer 1 whose feature reads that and writes
straight to the logit's direction. The replacement is exact there, so for every edit the predicted
change of the target logit equals the real one, and the real one equals plain hooks on the HF MLP
modules (input read by a pre-hook, the feature encoded by hand, ``(a' - a) W_dec[f]`` added to the
MLP's output by a forward hook; the real MLP output, so the transcoder's error, kept)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.graphs.test_graph_check import IDS, A, hooked_logit, linear_planted_llama
from workers.compute.graph_check import node_check
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes

T0, T1 = (0, 3, 0), (1, 3, 0)  # (layer, position, transcoder feature)


def planted_transcoder(layer: int) -> SparseAutoencoder:
    """ReLU transcoder 8 -> 8 with two features. Layer 0: feature 0 = 0.25 x0 (1 on token 1), writes
    10 e1 (A's direction). Layer 1: feature 0 = 0.1 x1 (about 9.6 there), writes e2 (what logit 5
    reads). Feature 1 reads x3 negatively and is never active. A random skip term and decoder bias:
    the real MLP output stays, so they change nothing."""
    cfg = SaeConfig(architecture="relu", d_in=8, d_sae=2, apply_b_dec_to_input=False,
                    hook_name=f"blocks.{layer}.mlp.hook_in", transcoder=True, skip=True)
    g = torch.Generator().manual_seed(layer)
    tensors = {name: torch.randn(shape, generator=g) for name, shape in tensor_shapes(cfg).items()}
    tensors["W_enc"] = torch.zeros(8, 2)
    tensors["b_enc"] = torch.zeros(2)
    tensors["W_enc"][0 if layer == 0 else 1, 0] = 0.25 if layer == 0 else 0.1
    tensors["W_enc"][3, 1] = -1.0
    tensors["W_dec"][0] = 10 * torch.eye(8)[1] if layer == 0 else torch.eye(8)[2]
    return SparseAutoencoder(cfg, tensors)


TCS = {0: planted_transcoder(0), 1: planted_transcoder(1)}


def hand_logit(model: Any, edits: dict[int, Any], neuron_edits: dict[Any, Any] | None = None) -> float:
    """Logit 5 with transcoder edits made by hand (``edits``: layer -> a' as a function of a, at
    position 3, feature 0) through plain hooks on the MLP modules, in layer order within one pass."""
    handles = []
    for layer, new in edits.items():
        mlp, tc = model.model.layers[layer].mlp, TCS[layer]
        seen: dict[str, torch.Tensor] = {}

        def read(m: Any, args: Any, seen: dict[str, torch.Tensor] = seen) -> None:
            seen["x"] = args[0].clone()

        def write(m: Any, args: Any, out: torch.Tensor, seen: dict[str, torch.Tensor] = seen, tc: Any = tc,
                  new: Any = new) -> torch.Tensor:
            a = torch.relu(seen["x"][0, 3] @ tc.W_enc.detach()[:, 0] + tc.b_enc.detach()[0])
            out = out.clone()
            out[0, 3] += (new(a) - a) * tc.W_dec.detach()[0]
            return out

        handles += [mlp.register_forward_pre_hook(read), mlp.register_forward_hook(write)]
    try:
        return hooked_logit(model, neuron_edits or {})
    finally:
        for handle in handles:
            handle.remove()


def test_the_planted_features_are_active() -> None:
    model = linear_planted_llama()
    clean = hand_logit(model, {})
    # Taking layer 1's feature away removes 8 a1 (a1 = 0.1 * 2A), a1 about 9.6.
    assert clean - hand_logit(model, {1: lambda a: 0 * a}) == pytest.approx(8 * 9.6, rel=1e-3)


@pytest.mark.parametrize(("units", "op", "value", "by_hand"), [
    ([T1], "zero", 0.0, {1: lambda a: 0 * a}),
    ([T0], "zero", 0.0, {0: lambda a: 0 * a}),
    ([T0, T1], "zero", 0.0, {0: lambda a: 0 * a, 1: lambda a: 0 * a}),
    ([T1], "scale", 0.25, {1: lambda a: 0.25 * a}),
    ([T0, T1], "scale", 2.0, {0: lambda a: 2 * a, 1: lambda a: 2 * a}),
    ([T1], "clamp", 5.0, {1: lambda a: 0 * a + 5}),
    ([T0, T1], "clamp", 3.0, {0: lambda a: 0 * a + 3, 1: lambda a: 0 * a + 3}),
    ([T0], "steer", -0.5, {0: lambda a: a - 0.5}),
    ([T0, T1], "steer", 4.0, {0: lambda a: a + 4, 1: lambda a: a + 4}),
])
def test_transcoder_edits_predicted_equal_real(units: list[tuple[int, int, int]], op: str, value: float,
                                               by_hand: dict[int, Any]) -> None:
    model = linear_planted_llama()
    check = node_check(model, IDS, units, 5, TCS, op=op, value=value)
    clean = hand_logit(model, {})
    real = hand_logit(model, by_hand) - clean
    assert abs(real) > 1.0
    assert check.clean == pytest.approx(clean, rel=1e-6)
    assert check.real == pytest.approx(real, rel=1e-5)
    assert check.predicted == pytest.approx(real, rel=1e-4)
    assert sum(check.terms) == pytest.approx(check.predicted) and len(check.terms) == len(units)


def test_a_neuron_and_a_transcoder_feature_downstream_of_it() -> None:
    """Neuron A zeroed on layer 0 (neuron basis there) with layer 1's feature: the feature reads 2A e1,
    so once A is gone there is nothing left of it to ablate, in the prediction as in the model."""
    model = linear_planted_llama()
    saes = {1: TCS[1]}
    both = node_check(model, IDS, [A, T1], 5, saes, op="zero")
    alone = node_check(model, IDS, [A], 5, saes, op="zero")
    clean = hand_logit(model, {})
    real = hand_logit(model, {1: lambda a: 0 * a}, {A: lambda a: 0 * a}) - clean
    assert both.real == pytest.approx(real, rel=1e-5)
    assert both.predicted == pytest.approx(real, rel=1e-4)
    assert both.terms[1] == pytest.approx(0.0, abs=1e-3 * abs(real))
    assert both.predicted == pytest.approx(alone.predicted, rel=1e-4)


def test_an_inactive_feature_ablated_changes_nothing_but_steered_does() -> None:
    model = linear_planted_llama()
    zero = node_check(model, IDS, [(1, 3, 1)], 5, TCS, op="zero")
    assert zero.predicted == 0.0 and zero.real == 0.0
    steer = node_check(model, IDS, [(1, 2, 0)], 5, TCS, op="steer", value=1.0)  # position 2: not the last
    assert steer.predicted == pytest.approx(steer.real, abs=1e-4)  # attention writes nothing: both 0
    last = node_check(model, IDS, [(1, 3, 0)], 5, TCS, op="steer", value=1.0)
    assert last.predicted == pytest.approx(8.0, rel=1e-4) and last.real == pytest.approx(8.0, rel=1e-4)


def test_bad_transcoder_nodes_are_refused() -> None:
    model = linear_planted_llama()
    with pytest.raises(ValueError, match="out of range"):
        node_check(model, IDS, [(1, 3, 2)], 5, TCS, op="zero")
    misplaced = {1: TCS[0]}  # layer 0's transcoder given for layer 1
    with pytest.raises(ValueError, match="reads blocks.0.mlp.hook_in, not blocks.1.mlp.hook_in"):
        node_check(model, IDS, [T1], 5, misplaced, op="zero")
