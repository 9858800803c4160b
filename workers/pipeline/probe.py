"""Try your own text: one unit's activation on every token of a user's text, on a worker.

The model (and an SAE source's weights) stay loaded in the worker process between requests (the
loader's cache), so only the first probe of a model pays for loading it.
"""

from __future__ import annotations

from typing import Any

import torch

from browser.catalog.models import Source, Unit
from workers.compute import hooks
from workers.pipeline.loader import device_for, model_on, source_sae

MAX_TOKENS = 512  # longer text is cut: one forward pass of a short sequence keeps this interactive


def probe(*, unit_id: int, text: str) -> dict[str, list[Any]]:
    """{"token_ids": [...], "values": [...]}: the unit's activation at each token of ``text``
    (special tokens the tokenizer adds included, as in the harvest's contexts)."""
    unit = Unit.objects.select_related("source", "source__model").get(pk=unit_id)
    source, model, device = unit.source, unit.source.model, device_for()
    torch_model, arch, tokenizer = model_on(model, device)
    ids = tokenizer(text, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    input_ids = torch.tensor([ids], device=device)
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(torch_model, arch, [source.hook_point], model.n_layers,
                       lambda hook, acts: captured.__setitem__(hook, acts[0].clone())):
        hooks.forward(torch_model, input_ids, torch.ones_like(input_ids))
    acts = captured[source.hook_point]  # [T, d]
    if source.kind in (Source.Kind.SAE, Source.Kind.TRANSCODER):
        with torch.inference_mode():
            acts = source_sae(source, device).encode(acts)  # [T, d_sae]
    return {"token_ids": [int(t) for t in ids], "values": acts[:, unit.index].float().cpu().tolist()}
