"""Intervention scores of a transcoder source on the tiny LLaMA: each feature is ablated as its
intervention does (``(0 - a) W_dec[f]`` added to layer 1's MLP output, the real MLP output kept), and
the stored score equals the same ablation made here by hand: a plain pre-hook on the HF MLP module
reading its input, the feature encoded by hand from the transcoder's tensors, a forward hook adding
the change to the MLP's output."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.core.management import call_command

from browser.catalog.models import Model, Score
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.runs.models import Run
from fixtures.tiny_llama import D_MODEL, build_tiny_llama
from tests.texts import TEXTS
from workers.compute import loading
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow
TC_HOOK = "blocks.1.mlp.hook_in"
TC = "blocks.1.mlp.transcoder-relu-16"


def _transcoder() -> SparseAutoencoder:
    cfg = SaeConfig(architecture="relu", d_in=D_MODEL, d_sae=16, apply_b_dec_to_input=False, hook_name=TC_HOOK,
                    transcoder=True, skip=True, hook_name_out="blocks.1.hook_mlp_out")
    g = torch.Generator().manual_seed(11)
    return SparseAutoencoder(cfg, {name: torch.randn(shape, generator=g) / 2 for name, shape in tensor_shapes(cfg).items()})


@pytest.fixture
def run(minilm: Model, tmp_path: Path) -> Run:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", context_length=16, inline=True, stdout=io.StringIO())
    model = model_register(location=str(build_tiny_llama(tmp_path / "tiny-llama")), name="tiny-llama")
    sae_register(model=model, name=TC, sae=_transcoder())
    call_command("harvest", model="tiny-llama", corpus="lines", hooks="none", saes=TC, k=6, inline=True,
                 stdout=io.StringIO())
    run = Run.objects.get(model__name="tiny-llama")
    assert run.status == Run.Status.DONE, run.error
    return run


def test_a_transcoder_feature_score_equals_its_ablation_by_hand(run: Run) -> None:
    out = io.StringIO()
    call_command("score", run=run.pk, intervention=True, contexts=256, inline=True, stdout=out)
    assert "skipped" not in out.getvalue()
    scores = {s.unit.index: s for s in Score.objects.filter(name="intervention_kl", unit__source__name=TC)
              .select_related("unit")}
    assert len(scores) == 16
    feature = max(scores, key=lambda i: scores[i].value)
    tc = _transcoder()
    W_enc, b_enc, W_dec = (t.detach() for t in (tc.W_enc, tc.b_enc, tc.W_dec))
    location = Model.objects.get(name="tiny-llama").location
    model = loading.load_torch_model(location, Path("/nonexistent"), True, "cpu", "float32")
    mlp = model.model.layers[1].mlp
    seen: dict[str, torch.Tensor] = {}

    def ablate(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        a = torch.relu(seen["x"] @ W_enc[:, feature] + b_enc[feature])  # [B, T]: encoded by hand
        return output - a[..., None] * W_dec[feature]

    pairs = set(Example.objects.filter(unit=scores[feature].unit, kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL])
                .values_list("context_id", "max_pos"))
    kls = []
    with torch.inference_mode():
        for ctx, pos in pairs:
            ids = torch.tensor([decode_tokens(bytes(Context.objects.get(pk=ctx).tokens))[: pos + 1]])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            handles = [mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
                       mlp.register_forward_hook(ablate)]
            try:
                log_q = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            finally:
                for handle in handles:
                    handle.remove()
            kls.append(float((log_p.exp() * (log_p - log_q)).sum()))
    assert scores[feature].value > 1e-6 and scores[feature].details["contexts"] == len(pairs)
    assert scores[feature].value == pytest.approx(sum(kls) / len(kls), rel=1e-3)
