"""Every hook point of every supported architecture against a hand computation from the model's
own modules, and logit effects through each model's own post-MLP and final norms (issue 14 item
7, issue 21 item 1). Tiny seeded random models from transformers configs: no download."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_archs import N_LAYERS, TINY_ARCHS, build_tiny
from tests.compute import hand
from workers.compute import hooks
from workers.compute.logits import logit_effects

VOCAB = 211


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0  # a padded row, as the harvest's last batch has
    return ids, mask


def _names(model: torch.nn.Module) -> list[str]:
    parallel = getattr(model.config, "use_parallel_residual", False)
    return [name for name in hooks.hook_points(N_LAYERS) if not (parallel and name.endswith("hook_resid_mid"))]


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_every_hook_point_equals_the_hand_computation(arch_name: str) -> None:
    model = build_tiny(arch_name, vocab_size=VOCAB)
    arch = hooks.architecture_for(model.config.model_type)
    ids, mask = _inputs()
    want = hand.activations(model, ids, mask)
    names = _names(model)
    assert len(names) == len(want)
    got: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, names, N_LAYERS, lambda name, a: got.__setitem__(name, a.clone())):
        hooks.forward(model, ids, mask)
    assert set(got) == set(want)
    valid = mask.bool()
    for name in names:
        assert got[name].shape == want[name].shape, name
        assert torch.allclose(got[name][valid], want[name][valid], atol=1e-5, rtol=1e-4), name
    d_mlp = want["blocks.0.mlp.hook_post"].shape[-1]
    assert hooks.dims(model.config, arch)[2] == d_mlp


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
def test_forward_stops_after_the_deepest_hook(arch_name: str) -> None:
    """Each hook point alone: captured, and nothing after it runs (the last down projection is spied on)."""
    model = build_tiny(arch_name, vocab_size=VOCAB)
    arch = hooks.architecture_for(model.config.model_type)
    ids, mask = _inputs()
    want = hand.activations(model, ids, mask)
    ran: list[bool] = []
    spy = arch.mlp_out(arch.layers(model)[N_LAYERS - 1]).register_forward_hook(lambda *_: ran.append(True))
    try:
        for name in _names(model):
            got: dict[str, torch.Tensor] = {}
            with hooks.capture(model, arch, [name], N_LAYERS, lambda n, a, got=got: got.__setitem__(n, a.clone())):
                hooks.forward(model, ids, mask)
            assert torch.allclose(got[name][mask.bool()], want[name][mask.bool()], atol=1e-5, rtol=1e-4), name
            # The last down projection runs only when the block's output is hooked.
            assert bool(ran) == (name == f"blocks.{N_LAYERS - 1}.hook_resid_post"), name
            ran.clear()
    finally:
        spy.remove()


CAUSAL = [a for a in TINY_ARCHS if a != "bert"]


@pytest.mark.parametrize("arch_name", CAUSAL)
def test_neuron_logit_effects_through_the_models_own_norms(arch_name: str) -> None:
    model = build_tiny(arch_name, vocab_size=VOCAB)
    arch = hooks.architecture_for(model.config.model_type)
    layer = 1
    block = arch.layers(model)[layer]
    post_norm = getattr(block, "post_feedforward_layernorm", None)  # Gemma 2/3, OLMo 2
    want = hand.neuron_logits(model, layer, arch.final_norm(model), post_norm)
    got = logit_effects(model, arch, arch.neuron_directions(block))
    assert len(got) == want.shape[0]
    for effect, row in zip(got, want, strict=True):
        up, down = torch.topk(row, 10), torch.topk(-row, 10)
        assert [t for t, _ in effect["up"]] == up.indices.tolist()
        assert [t for t, _ in effect["down"]] == down.indices.tolist()
        assert [v for _, v in effect["up"]] == pytest.approx(up.values.tolist(), abs=2e-4)
        assert [v for _, v in effect["down"]] == pytest.approx((-down.values).tolist(), abs=2e-4)


@pytest.mark.parametrize("arch_name", ["gemma2", "llama", "gpt2", "pythia"])
def test_splice_replaces_each_hook_point(arch_name: str) -> None:
    """Zeroing a point's activation by ``splice``: the point reads zero and the next block's
    input changes."""
    model = build_tiny(arch_name, vocab_size=VOCAB)
    arch = hooks.architecture_for(model.config.model_type)
    ids, mask = _inputs()
    clean = hand.activations(model, ids, mask)["blocks.2.hook_resid_pre"]
    for name in _names(model):
        if not name.startswith("blocks.1."):
            continue
        seen: dict[str, torch.Tensor] = {}
        with hooks.splice(model, arch, name, N_LAYERS, lambda a: a * 0), \
                hooks.capture(model, arch, [name, "blocks.2.hook_resid_pre"], N_LAYERS,
                              lambda n, a, seen=seen: seen.__setitem__(n, a.clone())):
            hooks.forward(model, ids, mask)
        assert torch.count_nonzero(seen[name]) == 0, name
        assert not torch.allclose(seen["blocks.2.hook_resid_pre"], clean), name


def test_unsupported_architecture_and_parallel_resid_mid_are_clear_errors() -> None:
    with pytest.raises(hooks.HookError, match=r"unsupported architecture 'mamba'; supported: .*gemma2"):
        hooks.architecture_for("mamba")
    model = build_tiny("pythia", vocab_size=VOCAB)
    arch = hooks.architecture_for("gpt_neox")
    with pytest.raises(hooks.HookError, match="parallel"), hooks.capture(
            model, arch, ["blocks.1.hook_resid_mid"], N_LAYERS, lambda n, a: None):
        pass
    with pytest.raises(hooks.HookError, match="unknown hook point 'blocks.1.attn'"):
        hooks.parse_hook("blocks.1.attn", N_LAYERS)


@pytest.mark.parametrize("arch_name", ["gemma2", "gemma3_text"])
def test_gemma_resid_pre_of_block_0_is_the_scaled_embedding(arch_name: str) -> None:
    model = build_tiny(arch_name, vocab_size=VOCAB)
    arch = hooks.architecture_for(model.config.model_type)
    ids, mask = _inputs()
    got: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, ["blocks.0.hook_resid_pre"], N_LAYERS, lambda n, a: got.__setitem__(n, a.clone())):
        hooks.forward(model, ids, mask)
    want = model.model.embed_tokens.weight.detach()[ids] * torch.tensor(32**0.5)
    assert torch.allclose(got["blocks.0.hook_resid_pre"], want, atol=1e-6)
