"""Logit effects against references written from the models' own modules (issue 14 item 6).

The reference takes a direction through the model's final norm module itself and undoes the
norm's per-token scale, computed by hand from the direction: what remains is the norm acting on
the direction with that scale frozen (LayerNorm: mean removed, times weight; RMSNorm: times
weight). A second reference for GPT-2 folds ln_f into the unembedding as TransformerLens does
(weight folded, unembedding centred along d_model).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.compute import logits
from workers.compute.hooks import architecture_for
from workers.compute.logits import Bf16Screen, exact_top, logit_effects


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Weights far from 1 and biases far from 0, so a norm that is folded wrongly shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "weight", None), torch.Tensor) and "Norm" in type(module).__name__:
                module.weight.copy_(1 + 0.8 * torch.randn(module.weight.shape, generator=g))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g))


def _tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=24, n_layer=2, n_head=2,
                                       initializer_range=0.5)).eval()
    _randomize_norms(model, 1)
    return model


def _tiny_neox(parallel: bool) -> nn.Module:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=40, max_position_embeddings=32, use_parallel_residual=parallel,
                           initializer_range=0.5)
    model = GPTNeoXForCausalLM(config).eval()
    _randomize_norms(model, 2)
    return model


def _tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=40, max_position_embeddings=32,
                         initializer_range=0.5)
    model = LlamaForCausalLM(config).eval()
    _randomize_norms(model, 3)
    return model


def _directions(d_model: int) -> torch.Tensor:
    """Random directions with a clear mean of their own (a neuron's write usually has one)."""
    g = torch.Generator().manual_seed(5)
    return torch.randn(6, d_model, generator=g) + torch.linspace(-2, 2, 6)[:, None]


def _module_reference(norm: nn.Module, unembed: nn.Module, d: torch.Tensor) -> torch.Tensor:
    """Logits [U, vocab] of directions through ``norm`` with its scale frozen, by the modules."""
    with torch.no_grad():
        if isinstance(norm, nn.LayerNorm):
            # LayerNorm(d) = (d - mean d) / sqrt(var d + eps) * w + b
            scale = (d.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            normed = (norm(d) - norm.bias) * scale
        else:
            # RMSNorm(d) = d / sqrt(mean d^2 + eps) * w
            eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
            normed = norm(d) * (d.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return unembed(normed) - unembed(torch.zeros_like(normed))


def _assert_effects(got: list[dict[str, object]], logits: torch.Tensor) -> None:
    for effect, row in zip(got, logits, strict=True):
        up, down = torch.topk(row, 10), torch.topk(-row, 10)
        assert [t for t, _ in effect["up"]] == up.indices.tolist()  # type: ignore[attr-defined]
        assert [t for t, _ in effect["down"]] == down.indices.tolist()  # type: ignore[attr-defined]
        assert [v for _, v in effect["up"]] == pytest.approx(up.values.tolist(), abs=1e-4)  # type: ignore[attr-defined]
        assert [v for _, v in effect["down"]] == pytest.approx((-down.values).tolist(), abs=1e-4)  # type: ignore[attr-defined]


def test_gpt2_layernorm_removes_the_mean_like_ln_f() -> None:
    model = _tiny_gpt2()
    d = _directions(24)
    want = _module_reference(model.transformer.ln_f, model.lm_head, d)
    # TransformerLens's fold: W_U' = diag(w) W_U, centred along d_model; the bias is a constant.
    W_U = model.lm_head.weight.detach().T * model.transformer.ln_f.weight.detach()[:, None]  # [d_model, vocab]
    assert torch.allclose(want, d @ (W_U - W_U.mean(0, keepdim=True)), atol=1e-4)
    got = logit_effects(model, architecture_for("gpt2"), d)
    _assert_effects(got, want)
    # The old formula (weight only) ranks differently here: the test tells them apart.
    old = (d * model.transformer.ln_f.weight.detach()) @ model.lm_head.weight.detach().T
    assert any(torch.topk(o, 10).indices.tolist() != torch.topk(w, 10).indices.tolist() for o, w in zip(old, want, strict=True))


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_layernorm(parallel: bool) -> None:
    model = _tiny_neox(parallel)
    d = _directions(24)
    got = logit_effects(model, architecture_for("gpt_neox"), d)
    _assert_effects(got, _module_reference(model.gpt_neox.final_layer_norm, model.get_output_embeddings(), d))


def test_llama_rmsnorm_only_scales() -> None:
    model = _tiny_llama()
    d = _directions(24)
    got = logit_effects(model, architecture_for("llama"), d)
    _assert_effects(got, _module_reference(model.model.norm, model.lm_head, d))


def test_gpt2_neuron_directions_through_ln_f() -> None:
    """A neuron's logit effect: its c_proj row through ln_f and the unembedding."""
    model = _tiny_gpt2()
    arch = architecture_for("gpt2")
    layer = model.transformer.h[1]
    neuron = 3
    with torch.no_grad():
        # GPT-2's Conv1D computes x @ W + b: a one-hot neuron writes row `neuron` of W (the bias is not its own).
        one_hot = torch.zeros(1, layer.mlp.c_proj.weight.shape[0])
        one_hot[0, neuron] = 1
        write = layer.mlp.c_proj(one_hot) - layer.mlp.c_proj(torch.zeros_like(one_hot))
    got = logit_effects(model, arch, arch.neuron_directions(layer)[neuron : neuron + 1])
    _assert_effects(got, _module_reference(model.transformer.ln_f, model.lm_head, write))


def test_encoder_has_no_logit_effects() -> None:
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=20)).eval()
    assert logit_effects(model, architecture_for("bert"), torch.randn(3, 16)) == [{}, {}, {}]


def test_bf16_screen_gives_the_float32_top_tokens() -> None:
    """The bfloat16 screen against the float32 top over the whole vocabulary, on directions where
    bfloat16 alone ranks differently: planted near-ties at the 10th place, a zero direction (every
    logit ties: not certifiable, recomputed) and rows of very different norms."""
    g = torch.Generator().manual_seed(0)
    W_U = torch.randn(6000, 48, generator=g) * torch.rand(6000, 1, generator=g).add(0.2)
    d = torch.randn(200, 48, generator=g)
    d[7] = 0
    want = exact_top(d, W_U, 10)
    # Tokens at the 10th and 11th places of the up side 1e-4 apart: within bfloat16's error, not float32's.
    tenth, eleventh = want[0][:, 9], torch.topk(d @ W_U.T, 11, dim=1).indices[:, 10]
    W_U[eleventh[:20]] = W_U[tenth[:20]] * (1 - 1e-4)
    want = exact_top(d, W_U, 10)
    got = Bf16Screen(W_U).top(d, 10)
    for g_t, w_t in zip(got, want, strict=True):
        if g_t.dtype == torch.int64:
            assert torch.equal(g_t[torch.arange(200) != 7], w_t[torch.arange(200) != 7])
        else:
            assert torch.allclose(g_t, w_t, atol=1e-5)
    # bfloat16 alone would get some of these wrong: the float32 recompute is what makes them right.
    approx = torch.topk(d.bfloat16() @ W_U.bfloat16().T, 10, dim=1).indices
    assert not torch.equal(approx, want[0])


def test_llama_logit_effects_through_the_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole path with the screen on (a screen of 12 tokens leaves most of the 97 out). The product
    screens only where bfloat16 dot products are native (for speed); the result must not depend on
    that, so the check is told they are, on any CPU."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(logits, "SCREEN", 12)
    model = _tiny_llama()
    W_U = architecture_for("llama").unembed(model)
    assert W_U is not None and logits._screens(W_U, 10)
    d = _directions(24)
    got = logit_effects(model, architecture_for("llama"), d)
    _assert_effects(got, _module_reference(model.get_submodule("model.norm"), model.get_submodule("lm_head"), d))
