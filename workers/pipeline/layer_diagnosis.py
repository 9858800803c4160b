"""Superposition or another cause, per layer of a real model.

For one SAE on a layer's MLP neurons (``blocks.L.mlp.hook_post``), the model is run over the
held-out contexts at the end of a corpus (the ones ``train_sae`` leaves out, at most
``MAX_TOKENS`` valid tokens), the SAE encodes the neurons' activations, and
``workers.compute.diagnosis`` names each neuron's cause from the latents and the decoder. The
summary (causes counted over the neurons, the layer's live features, interference and L0, and a
few neurons of each cause with their evidence) is stored in the SAE's quality under
``diagnosis``; the source pages of the model show it per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from browser.catalog.models import Model, Sae
from browser.catalog.services import sae_quality_merge
from browser.corpora.models import Corpus
from workers.compute import diagnosis, hooks
from workers.pipeline.loader import model_on, sae_on
from workers.pipeline.sae_train import EVAL_CONTEXTS, _Activations
from workers.pipeline.saes import SaeInputError

MAX_TOKENS = 8192
"""Held-out tokens diagnosed per layer (latents [8192, d_sae] stay under 128 MB at 4,096 latents)."""
EXAMPLES_PER_CAUSE = 3


def neuron_hook(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def layer_sae(model: Model, layer: int) -> Sae | None:
    """The newest SAE registered on the layer's MLP neurons, if any."""
    return (Sae.objects.filter(source__model=model, source__hook_point=neuron_hook(layer))
            .select_related("source").order_by("-pk").first())


def held_out(corpus: Corpus) -> range:
    """The contexts ``train_sae`` holds out: the last tenth of the corpus, at most EVAL_CONTEXTS."""
    n_eval = max(1, min(EVAL_CONTEXTS, corpus.n_contexts // 10))
    return range(corpus.n_contexts - n_eval, corpus.n_contexts)


def layer_activations(model: Model, corpus: Corpus, hook: str, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """[tokens, d_mlp]: the hook's activations on the valid tokens of the held-out contexts."""
    if corpus.tokenizer_id != model.tokenizer_id:
        raise SaeInputError(f"corpus {corpus.name!r} was not tokenized for {model.name}")
    torch_model, arch, tok = model_on(model, "cpu")
    pad = int(tok.pad_token_id) if tok.pad_token_id is not None else 0
    acts = _Activations(model, torch_model, arch, hook, corpus, set(corpus.tokenizer.special_ids), pad)
    out, total = [], 0
    for chunk in acts.once(held_out(corpus)):
        out.append(chunk)
        total += len(chunk)
        if total >= max_tokens:
            break
    if not out:
        raise SaeInputError(f"the held-out contexts of {corpus.name!r} hold no tokens")
    return torch.cat(out)[:max_tokens]


def diagnosis_summary(found: list[diagnosis.Diagnosis], layer: diagnosis.Layer, tokens: int) -> dict[str, Any]:
    """What the page shows for one layer: cause counts, layer facts and a few neurons per cause."""
    examples: dict[str, list[dict[str, Any]]] = {}
    for d in found:
        shown = examples.setdefault(d.cause, [])
        if len(shown) < EXAMPLES_PER_CAUSE:
            shown.append({"unit": d.unit, "features": d.features[:8], "evidence": d.evidence})
    return {**diagnosis.summary(found, None), "units": len(found), "live_features": layer.n_live,
            "dims": layer.dims, "features_per_dim": round(layer.n_live / max(layer.dims, 1), 4),
            "interference": round(layer.interference, 4), "l0_mean": round(layer.l0_mean, 3),
            "tokens": tokens, "examples": examples}


@torch.no_grad()
def sae_diagnose(*, sae_row: Sae, corpus: Corpus, max_tokens: int = MAX_TOKENS,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Diagnose every neuron of the SAE's hook with the SAE's dictionary; stored and returned."""
    model = sae_row.source.model
    layer_index, site = hooks.parse_hook(sae_row.source.hook_point, model.n_layers)
    if site != "mlp.hook_post":
        raise SaeInputError(f"{sae_row.source.name} reads {sae_row.source.hook_point}, not a layer's MLP neurons")
    if progress:
        progress(f"layer {layer_index}: reading activations")
    x = layer_activations(model, corpus, sae_row.source.hook_point, max_tokens)
    sae = sae_on(sae_row)
    latents = sae.encode(x)  # [tokens, d_sae]
    W_dec = sae.W_dec.detach().float().cpu()  # [d_sae, d_mlp]
    facts = diagnosis.layer_facts(latents, W_dec)
    found = diagnosis.diagnose(latents, W_dec)
    summary = {**diagnosis_summary(found, facts, len(x)), "corpus": corpus.name, "layer": layer_index}
    sae_quality_merge(sae=sae_row, stats={"diagnosis": summary})
    return summary
