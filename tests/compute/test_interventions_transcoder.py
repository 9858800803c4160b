"""Transcoder features in interventions, on a tiny seeded LLaMA: every edit checked against the same
change made by hand with plain hooks on the model's own HF modules (the MLP module's input read by a
pre-hook, the feature encoded by hand from the transcoder's tensors, the change added to the MLP
module's output by a forward hook), never through the code under test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from tests.compute.test_interventions import ARCH, D_MODEL, N_LAYERS, logits, tiny_llama
from workers.compute.interventions import Edit, Intervention, InterventionError, applied
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.compute.steering import generate

D_TC, K = 32, 4
HOOK = "blocks.1.mlp.hook_in"


def transcoder(layer: int = 1, seed: int = 5, skip: bool = True, d_in: int = D_MODEL) -> SparseAutoencoder:
    cfg = SaeConfig(architecture="topk", d_in=d_in, d_sae=D_TC, k=K, apply_b_dec_to_input=False,
                    hook_name=f"blocks.{layer}.mlp.hook_in", transcoder=True, skip=skip)
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder(cfg, {name: torch.randn(shape, generator=g) for name, shape in tensor_shapes(cfg).items()})


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))


def encode_by_hand(tc: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """TopK of x @ W_enc + b_enc, ReLU'd: [..., d_sae] (the transcoder reads its input as it is)."""
    pre = x @ tc.W_enc.detach() + tc.b_enc.detach()
    kth = pre.topk(K, dim=-1).values[..., -1:]
    return torch.where(pre >= kth, pre.clamp_min(0), torch.zeros_like(pre))


@contextmanager
def mlp_edited(model: Any, layer: int, change: Any) -> Iterator[None]:
    """Plain hooks on the HF MLP module: its input kept by a pre-hook, ``change(input)`` [B, T, d_model]
    added to its output by a forward hook."""
    mlp = model.model.layers[layer].mlp
    seen: dict[str, torch.Tensor] = {}
    first = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].clone()))
    second = mlp.register_forward_hook(lambda m, args, out: out + change(seen["x"]))
    try:
        yield
    finally:
        first.remove()
        second.remove()


def active_feature(model: Any, ids: torch.Tensor, tc: SparseAutoencoder) -> tuple[int, torch.Tensor]:
    """The feature active at most positions, and the MLP input of layer 1 (read by a plain hook)."""
    seen: dict[str, torch.Tensor] = {}
    handle = model.model.layers[1].mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].clone()))
    try:
        logits(model, ids)
    finally:
        handle.remove()
    a = encode_by_hand(tc, seen["x"])
    f = int((a > 0).sum((0, 1)).argmax())
    assert int((a[..., f] > 0).sum()) >= 3 and int((a[..., f] == 0).sum()) >= 1  # active at some tokens, not all
    return f, seen["x"]


@pytest.mark.parametrize(("op", "value"), [("scale", 1.0), ("steer", 0.0)])
def test_a_unchanged_changes_no_logit(model: Any, ids: torch.Tensor, op: str, value: float) -> None:
    tc = transcoder()
    plain = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(HOOK, f, op, value, sae=tc) for f in range(D_TC)]))
    assert torch.equal(got, plain)


def test_clamp_to_the_current_value_changes_no_logit(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    f, x = active_feature(model, ids, tc)
    pos = int((encode_by_hand(tc, x[0])[:, f] > 0).nonzero()[0, 0])
    current = float(encode_by_hand(tc, x[0])[pos, f])
    got = logits(model, ids[:1], Intervention([Edit(HOOK, f, "clamp", current, sae=tc, positions=(pos,))]))
    torch.testing.assert_close(got, logits(model, ids[:1]), rtol=0, atol=1e-5)


def test_zero_ablation_subtracts_a_times_the_decoder_row_from_the_mlp_output(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    f, _ = active_feature(model, ids, tc)
    row = tc.W_dec[f].detach()
    with mlp_edited(model, 1, lambda x: -encode_by_hand(tc, x)[..., f : f + 1] * row):
        expected = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(HOOK, f, "zero", sae=tc)]))
    assert (expected - logits(model, ids)).abs().max() > 1e-2  # the ablation matters
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_scale_clamp_and_mean_at_chosen_positions(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    f, _ = active_feature(model, ids, tc)
    row = tc.W_dec[f].detach()
    mask = torch.zeros(1, ids.shape[1], 1)
    mask[0, [2, 6]] = 1
    for op, target in (("scale", lambda a: 3.0 * a), ("clamp", lambda a: 0 * a + 2.5), ("mean", lambda a: 0 * a - 1.0)):
        value = {"scale": 3.0, "clamp": 2.5, "mean": -1.0}[op]

        def change(x: torch.Tensor, target: Any = target) -> torch.Tensor:
            a = encode_by_hand(tc, x)[..., f : f + 1]
            return (target(a) - a) * row * mask

        with mlp_edited(model, 1, change):
            expected = logits(model, ids)
        got = logits(model, ids, Intervention([Edit(HOOK, f, op, value, sae=tc, positions=(2, 6))]))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got[:, :2], logits(model, ids)[:, :2])  # causal: positions before 2 untouched


def test_steering_adds_c_times_the_decoder_row(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    row = tc.W_dec[7].detach()
    with mlp_edited(model, 1, lambda x: 1.75 * row):
        expected = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(HOOK, 7, "steer", 1.75, sae=tc)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, logits(model, ids))


def test_an_upstream_edit_moves_the_feature_it_reads(model: Any, ids: torch.Tensor) -> None:
    """Layer 0's transcoder feature steered, layer 1's zeroed: layer 1's ``a`` is encoded from the
    MLP input that layer 0's edit produced, and a neuron edit at layer 1's own MLP input comes first."""
    tc0, tc1 = transcoder(0, seed=8), transcoder(1)
    f, _ = active_feature(model, ids, tc1)
    row0, row1 = tc0.W_dec[3].detach(), tc1.W_dec[f].detach()
    basis = torch.zeros(D_MODEL)
    basis[4] = 1
    mlp1 = model.model.layers[1].mlp
    pre = mlp1.register_forward_pre_hook(lambda m, args: (args[0] + 0.5 * basis, *args[1:]))  # blocks.1.mlp.hook_in[4] += 0.5
    try:
        with mlp_edited(model, 0, lambda x: 2.0 * row0), \
                mlp_edited(model, 1, lambda x: -encode_by_hand(tc1, x)[..., f : f + 1] * row1):
            expected = logits(model, ids)
    finally:
        pre.remove()
    got = logits(model, ids, Intervention([Edit("blocks.0.mlp.hook_in", 3, "steer", 2.0, sae=tc0),
                                           Edit(HOOK, f, "zero", sae=tc1), Edit(HOOK, 4, "steer", 0.5)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _greedy_by_hand(model: Any, ids: torch.Tensor, n: int, layer: int, change: Any) -> torch.Tensor:
    """No cache: the whole sequence again for every token, with the hand-made MLP edit."""
    seq = ids
    for _ in range(n):
        with mlp_edited(model, layer, change):
            nxt = logits(model, seq)[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return seq[:, ids.shape[1]:]


def test_generation_with_cache_reads_each_new_token(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    f, _ = active_feature(model, ids, tc)
    row = tc.W_dec[f].detach()
    got = generate(model, ARCH, N_LAYERS, ids, 6, Intervention([Edit(HOOK, f, "scale", -4.0, sae=tc)]))
    expected = _greedy_by_hand(model, ids, 6, 1, lambda x: -5.0 * encode_by_hand(tc, x)[..., f : f + 1] * row)
    assert torch.equal(got.tokens, expected)
    assert not torch.equal(got.tokens, generate(model, ARCH, N_LAYERS, ids, 6).tokens)


def test_bad_transcoder_edits_are_refused(model: Any, ids: torch.Tensor) -> None:
    tc = transcoder()
    with pytest.raises(InterventionError, match="transcoder reads an MLP's input"):
        Edit("blocks.1.mlp.hook_post", 3, "zero", sae=tc)
    with pytest.raises(InterventionError, match="out of range"):
        Edit(HOOK, D_TC, "zero", sae=tc)
    with pytest.raises(InterventionError, match="finite"):
        Edit(HOOK, 3, "clamp", float("inf"), sae=tc)
    with pytest.raises(InterventionError, match="twice"):
        Intervention([Edit(HOOK, 3, "zero", sae=tc), Edit(HOOK, 3, "steer", 1.0, sae=tc)])
    wide = transcoder(d_in=D_MODEL + 2)
    with pytest.raises(InterventionError, match="maps 18 values to 18, but this MLP reads 16 and writes 16"):
        logits(model, ids, Intervention([Edit(HOOK, 3, "zero", sae=wide)]))
    with pytest.raises(Exception, match="unknown hook point"), torch.inference_mode(), \
            applied(model, ARCH, N_LAYERS, Intervention([Edit("blocks.9.mlp.hook_in", 3, "zero", sae=tc)])):
        pass
    # Nothing stays installed after a refusal.
    assert not model.model.layers[1].mlp._forward_pre_hooks and not model.model.layers[1].mlp.down_proj._forward_hooks


def test_a_neuron_at_the_block_input_is_edited_there(model: Any, ids: torch.Tensor) -> None:
    """hook_resid_pre edits go to the block's input (they were applied at its output before)."""
    basis = torch.zeros(D_MODEL)
    basis[2] = 1
    handle = model.model.layers[1].register_forward_pre_hook(lambda m, args: (args[0] - 3.0 * basis, *args[1:]))
    try:
        expected = logits(model, ids)
    finally:
        handle.remove()
    got = logits(model, ids, Intervention([Edit("blocks.1.hook_resid_pre", 2, "steer", -3.0)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
