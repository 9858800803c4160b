"""Try your own text: one unit's activation on every token of a user's text, on a worker.

The model (and an SAE source's weights) stay loaded in the worker process between requests, so
only the first probe of a model pays for loading it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Source, Unit
from browser.core.blobs import blob_read
from workers.compute import hooks, loading

MAX_TOKENS = 512  # longer text is cut: one forward pass of a short sequence keeps this interactive


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def loaded_model(location: str, model_type: str, device: str) -> tuple[Any, hooks.Architecture, Any]:
    arch = hooks.architecture_for(model_type)
    cache = Path(settings.CACHE_DIR)
    return (loading.load_torch_model(location, cache, arch.causal, device, "float32"), arch,
            loading.load_tokenizer(location, cache))


@lru_cache(maxsize=4)
def loaded_sae(source_id: int, weights_id: int, device: str) -> Any:
    from workers.compute.sae.files import from_bytes, saelens_config

    sae = Source.objects.select_related("sae__weights").get(pk=source_id).sae
    # Sae.cfg is the SAELens cfg.json (a ReLU SAE is "standard" there), not a SaeConfig dict.
    return from_bytes(saelens_config(sae.cfg), blob_read(sae.weights)).to(device).eval()


def probe(*, unit_id: int, text: str) -> dict[str, list[Any]]:
    """{"token_ids": [...], "values": [...]}: the unit's activation at each token of ``text``
    (special tokens the tokenizer adds included, as in the harvest's contexts)."""
    unit = Unit.objects.select_related("source", "source__model").get(pk=unit_id)
    source, model, device = unit.source, unit.source.model, _device()
    torch_model, arch, tokenizer = loaded_model(model.location, model.config.get("model_type", model.architecture),
                                                device)
    ids = tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    input_ids = torch.tensor([ids], device=device)
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(torch_model, arch, [source.hook_point], model.n_layers,
                       lambda hook, acts: captured.__setitem__(hook, acts[0].clone())):
        hooks.forward(torch_model, input_ids, torch.ones_like(input_ids))
    acts = captured[source.hook_point]  # [T, d]
    if source.kind == Source.Kind.SAE:
        with torch.inference_mode():
            acts = loaded_sae(source.pk, source.sae.weights_id, device).encode(acts)  # [T, d_sae]
    return {"token_ids": [int(t) for t in ids], "values": acts[:, unit.index].float().cpu().tolist()}
