"""SmolLM2 (the packaged GGUF, a real LLaMA-architecture causal LM): load, harvest, logit effects."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.management import call_command

from browser.catalog.models import Unit
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from workers.compute import hooks, loading
from workers.pipeline.models import model_get_or_register

pytestmark = pytest.mark.slow


def test_smollm2_harvest_with_logit_effects(db: None, tmp_path: Path) -> None:
    model = model_get_or_register("smollm2-135m")
    assert (model.architecture, model.kind, model.n_layers, model.d_mlp) == ("llama", "causal_lm", 30, 1536)
    (tmp_path / "a.txt").write_text("Shall I compare thee to a summer's day? Thou art more lovely and more temperate. " * 4)
    call_command("import_corpus", str(tmp_path / "a.txt"), name="sonnet", tokenizer="smollm2-135m",
                 context_length=24, inline=True, stdout=io.StringIO())
    call_command("harvest", model="smollm2-135m", corpus="sonnet", hooks="blocks.1.mlp.hook_post", k=4,
                 inline=True, stdout=io.StringIO())
    bos = model.tokenizer.special_ids
    contexts = dict(Context.objects.values_list("id", "tokens"))
    assert decode_tokens(bytes(next(iter(contexts.values()))))[0] == 1  # each context starts with BOS
    for ctx, pos in Example.objects.values_list("context_id", "max_pos"):
        assert decode_tokens(bytes(contexts[ctx]))[pos] not in bos

    unit = Unit.objects.get(source__name="blocks.1.mlp.hook_post", index=5)
    assert len(unit.logit_effects["up"]) == len(unit.logit_effects["down"]) == 10
    torch_model = loading.load_torch_model("smollm2-135m", Path(settings.CACHE_DIR), True, "cpu", "float32")
    arch = hooks.architecture_for("llama")
    direction = torch_model.model.layers[1].mlp.down_proj.weight[:, 5] * torch_model.model.norm.weight
    logits = torch_model.lm_head.weight @ direction
    assert [t for t, _ in unit.logit_effects["up"]] == torch.topk(logits, 10).indices.tolist()
    assert [t for t, _ in unit.logit_effects["down"]] == torch.topk(-logits, 10).indices.tolist()
    assert arch.causal
