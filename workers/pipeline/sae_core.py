"""Every SAE on one hook measured on the same held-out tokens (``manage.py sae_core``): SAEBench's core
metrics (``workers.compute.sae_core``) and, for causal LMs, loss recovered; stored in each SAE's
quality under ``core`` so the source page can set them side by side."""

from __future__ import annotations

from typing import Any

import torch

from browser.catalog.models import Model, Sae, Source
from browser.catalog.services import sae_quality_merge
from browser.corpora.models import Corpus
from workers.compute.sae import quality
from workers.compute.sae_core import core_metrics
from workers.pipeline.layer_diagnosis import held_out, layer_activations
from workers.pipeline.loader import model_on, sae_on
from workers.pipeline.sae_train import _context_batches
from workers.pipeline.saes import SaeInputError


@torch.no_grad()
def hook_core(*, model: Model, hook: str, corpus: Corpus, max_tokens: int = 8192) -> dict[str, dict[str, Any]]:
    """Measure every SAE of ``model`` on ``hook``; {SAE name: its core metrics}."""
    rows = list(Sae.objects.filter(source__model=model, source__hook_point=hook, source__kind=Source.Kind.SAE)
                .select_related("source").order_by("pk"))
    if not rows:
        raise SaeInputError(f"{model.name} has no SAE on {hook}")
    x = layer_activations(model, corpus, hook, max_tokens)
    torch_model, arch, tok = model_on(model, "cpu")
    out = {}
    for row in rows:
        sae = sae_on(row)
        core: dict[str, Any] = {**core_metrics(sae, x), "corpus": corpus.name}
        if arch.causal:
            pad = int(tok.pad_token_id) if tok.pad_token_id is not None else 0
            batches = ((b.ids, b.attention_mask) for b in _context_batches(
                corpus, held_out(corpus), set(corpus.tokenizer.special_ids), pad))
            core.update(quality.loss_recovered(torch_model, arch, model.n_layers, hook, sae, batches))
        sae_quality_merge(sae=row, stats={"core": core})
        out[row.source.name] = core
    return out
