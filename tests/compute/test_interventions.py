"""Interventions on a tiny seeded LLaMA, each checked against the same change made by hand on the
model's own modules (weights edited, or a plain hook that adds the vector)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pytest
import torch
from torch import nn

from fixtures.tiny_sae import random_sae
from workers.compute import hooks
from workers.compute.interventions import Edit, Intervention, InterventionError, applied
from workers.compute.steering import generate, shift

ARCH = hooks.architecture_for("llama")
N_LAYERS, D_MODEL, D_MLP, VOCAB = 2, 16, 24, 50
MLP = "blocks.1.mlp.hook_post"
RESID = "blocks.0.hook_resid_post"


def tiny_llama(seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, ids: torch.Tensor, intervention: Intervention | None = None) -> torch.Tensor:
    with torch.inference_mode():
        if intervention is None:
            return model(input_ids=ids).logits
        with applied(model, ARCH, N_LAYERS, intervention):
            return model(input_ids=ids).logits


@contextmanager
def added(module: nn.Module, vector: torch.Tensor, positions: slice = slice(None), pre: bool = False) -> Iterator[None]:
    """A hand-written hook: ``vector`` added to the module's input (pre) or output at ``positions``."""
    def add(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, positions] += vector
        return x

    if pre:
        handle = module.register_forward_pre_hook(lambda m, args: (add(args[0]), *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out))
    try:
        yield
    finally:
        handle.remove()


def mlp_input(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    seen: dict[str, torch.Tensor] = {}
    with hooks.capture(model, ARCH, [MLP], N_LAYERS, lambda name, x: seen.__setitem__(name, x.clone())):
        hooks.forward(model, ids, torch.ones_like(ids))
    return seen[MLP]


@pytest.mark.parametrize("op,value", [("scale", 1.0), ("steer", 0.0)])
@pytest.mark.parametrize("hook", [MLP, RESID])
def test_strength_zero_changes_no_logit(model: nn.Module, ids: torch.Tensor, hook: str, op: str, value: float) -> None:
    plain = logits(model, ids)
    assert torch.equal(logits(model, ids, Intervention([Edit(hook, 3, op, value)])), plain)


def test_clamp_to_the_current_value_changes_no_logit(model: nn.Module, ids: torch.Tensor) -> None:
    plain = logits(model, ids[:1])
    current = float(mlp_input(model, ids[:1])[0, 4, 7])
    assert torch.equal(logits(model, ids[:1], Intervention([Edit(MLP, 7, "clamp", current, positions=(4,))])), plain)


def test_zero_ablation_equals_zeroing_the_down_projection_column(model: nn.Module, ids: torch.Tensor) -> None:
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand.model.layers[1].mlp.down_proj.weight[:, 5] = 0
        by_hand.model.layers[1].mlp.down_proj.weight[:, 11] = 0
    expected = logits(by_hand, ids)
    got = logits(model, ids, Intervention([Edit(MLP, 5, "zero"), Edit(MLP, 11, "zero")]))
    assert not torch.allclose(expected, logits(model, ids))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_scale_and_clamp_of_a_neuron_by_hand(model: nn.Module, ids: torch.Tensor) -> None:
    x = mlp_input(model, ids)  # what the down projection reads
    column = model.model.layers[1].mlp.down_proj.weight[:, 5].detach()
    with added(model.model.layers[1].mlp.down_proj, (2.5 - 1) * x[..., 5:6] * column):
        expected_scale = logits(model, ids)
    with added(model.model.layers[1].mlp.down_proj, (3.0 - x[..., 5:6]) * column):
        expected_clamp = logits(model, ids)
    torch.testing.assert_close(logits(model, ids, Intervention([Edit(MLP, 5, "scale", 2.5)])), expected_scale,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(model, ids, Intervention([Edit(MLP, 5, "mean", 3.0)])), expected_clamp,
                               rtol=1e-5, atol=1e-5)


def test_steering_a_neuron_adds_its_output_direction(model: nn.Module, ids: torch.Tensor) -> None:
    column = model.model.layers[1].mlp.down_proj.weight[:, 5].detach()
    with added(model.model.layers[1].mlp.down_proj, 4.0 * column):
        expected = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(MLP, 5, "steer", 4.0)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_steering_a_residual_dimension_at_one_position(model: nn.Module, ids: torch.Tensor) -> None:
    basis = torch.zeros(D_MODEL)
    basis[2] = 1
    with added(model.model.layers[0], -3.0 * basis, positions=slice(5, 6)):
        expected = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(RESID, 2, "steer", -3.0, positions=(5,))]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, :5], logits(model, ids)[:, :5])  # causal: earlier positions untouched


@pytest.mark.parametrize("architecture", ["relu", "topk"])
def test_sae_feature_with_a_unchanged_changes_nothing(model: nn.Module, ids: torch.Tensor, architecture: str) -> None:
    sae = random_sae(D_MLP, 40, architecture, k=6, seed=2)
    plain = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(MLP, f, "scale", 1.0, sae=sae) for f in range(40)]))
    assert torch.equal(got, plain)


def test_sae_feature_ablation_keeps_the_error_term(model: nn.Module, ids: torch.Tensor) -> None:
    sae = random_sae(D_MLP, 40, "relu", seed=2)
    x = mlp_input(model, ids)
    a = torch.relu((x - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach())  # encode by hand
    f = int(a[0].sum(0).argmax())
    assert float(a[..., f].abs().sum()) > 0
    down = model.model.layers[1].mlp.down_proj
    with added(down, (-a[..., f : f + 1]) * sae.W_dec[f].detach(), pre=True):
        expected_zero = logits(model, ids)
    with added(down, 1.5 * sae.W_dec[f].detach(), pre=True):
        expected_steer = logits(model, ids)
    torch.testing.assert_close(logits(model, ids, Intervention([Edit(MLP, f, "zero", sae=sae)])), expected_zero,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(model, ids, Intervention([Edit(MLP, f, "steer", 1.5, sae=sae)])), expected_steer,
                               rtol=1e-5, atol=1e-5)


def test_normalized_sae_steers_in_the_hooks_scale(model: nn.Module, ids: torch.Tensor) -> None:
    sae = random_sae(D_MLP, 40, "relu", seed=3, normalize_activations="constant_norm_rescale")
    x = mlp_input(model, ids)
    scale = D_MLP**0.5 / x.norm(dim=-1, keepdim=True)  # SAELens: the encoder reads x * scale
    with added(model.model.layers[1].mlp.down_proj, 2.0 * sae.W_dec[7].detach() / scale, pre=True):
        expected = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(MLP, 7, "steer", 2.0, sae=sae)]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rows_limit_the_edit_to_part_of_the_batch(model: nn.Module, ids: torch.Tensor) -> None:
    plain = logits(model, ids)
    got = logits(model, ids, Intervention([Edit(MLP, 5, "steer", 8.0)], rows=slice(1, 2)))
    assert torch.equal(got[0], plain[0])
    assert not torch.allclose(got[1], plain[1])


def test_bad_edits_are_refused() -> None:
    with pytest.raises(InterventionError, match="unknown intervention"):
        Edit(MLP, 1, "explode")
    with pytest.raises(InterventionError, match="finite"):
        Edit(MLP, 1, "steer", float("nan"))
    with pytest.raises(InterventionError, match="twice"):
        Intervention([Edit(MLP, 1, "zero"), Edit(MLP, 1, "steer", 1.0)])
    with pytest.raises(InterventionError, match="out of range"):
        Edit(MLP, 40, "zero", sae=random_sae(D_MLP, 40, "relu"))


def _greedy_by_hand(model: nn.Module, ids: torch.Tensor, n: int, hook: Any = None) -> torch.Tensor:
    """No cache: the whole sequence again for every token (``hook`` installs the change by hand)."""
    seq = ids
    for _ in range(n):
        with hook() if hook else nullcontext():
            nxt = logits(model, seq)[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return seq[:, ids.shape[1]:]


def test_generation_with_cache_equals_full_recompute(model: nn.Module, ids: torch.Tensor) -> None:
    down = model.model.layers[1].mlp.down_proj
    column = down.weight[:, 5].detach()
    got = generate(model, ARCH, N_LAYERS, ids, 6, Intervention([Edit(MLP, 5, "steer", 6.0)]))
    assert torch.equal(got.tokens, _greedy_by_hand(model, ids, 6, lambda: added(down, 6.0 * column)))
    assert torch.equal(generate(model, ARCH, N_LAYERS, ids, 6).tokens, _greedy_by_hand(model, ids, 6))
    # An edit at one generated position only (absolute position 11 = the third generated token's input).
    at = ids.shape[1] + 2
    got = generate(model, ARCH, N_LAYERS, ids, 6, Intervention([Edit(MLP, 5, "steer", 6.0, positions=(at,))]))
    assert torch.equal(got.tokens, _greedy_by_hand(model, ids, 6, lambda: added(down, 6.0 * column, slice(at, at + 1))))


def test_sampling_is_seeded_and_shared_between_rows(model: nn.Module, ids: torch.Tensor) -> None:
    twice = ids[:1].repeat(2, 1)
    a = generate(model, ARCH, N_LAYERS, twice, 8, temperature=1.0, seed=3)
    b = generate(model, ARCH, N_LAYERS, twice, 8, temperature=1.0, seed=3)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens[0], a.tokens[1])
    assert not torch.equal(a.tokens, generate(model, ARCH, N_LAYERS, twice, 8, temperature=1.0, seed=4).tokens)


def test_shift_against_torch_kl() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(30, generator=g), torch.randn(30, generator=g)
    s = shift(p, q, top=5)
    expected = torch.nn.functional.kl_div(torch.log_softmax(q, -1), torch.log_softmax(p, -1), log_target=True,
                                          reduction="sum")
    assert s.kl == pytest.approx(float(expected), rel=1e-5)
    change = torch.softmax(q, -1) - torch.softmax(p, -1)
    assert [t for t, _, _ in s.up] == torch.topk(change, 5).indices.tolist()
    assert [t for t, _, _ in s.down] == torch.topk(-change, 5).indices.tolist()
    assert shift(p, p).kl == 0.0
