"""The one place that loads models, tokenizers and SAEs onto a device, cached per worker process.

Harvests, score jobs, label scores, probes and interventions all ask here, so a worker loads a
model once however many kinds of task it serves.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Model, Sae, Source
from browser.core.selectors import blob_read
from workers.compute import hooks, loading
from workers.compute.sae import files
from workers.compute.sae.model import SparseAutoencoder


def device_for(requested: str = "auto") -> str:
    """``auto`` is the GPU when there is one; anything else is taken as named."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def model_type(model: Model) -> str:
    return str(model.config.get("model_type", model.architecture))


@lru_cache(maxsize=2)
def loaded_model(location: str, model_type: str, device: str, dtype: str = "float32"
                 ) -> tuple[Any, hooks.Architecture, Any]:
    """(torch model in eval mode on ``device``, its architecture, its tokenizer)."""
    arch = hooks.architecture_for(model_type)
    cache = Path(settings.CACHE_DIR)
    return (loading.load_torch_model(location, cache, arch.causal, device, dtype), arch,
            loading.load_tokenizer(location, cache))


def model_on(model: Model, device: str, dtype: str = "float32") -> tuple[Any, hooks.Architecture, Any]:
    """``loaded_model`` for a catalog model (float32 on the CPU, whatever dtype is asked)."""
    return loaded_model(model.location, model_type(model), device, dtype if device != "cpu" else "float32")


@lru_cache(maxsize=8)
def _sae(sae_id: int, weights_id: int, device: str) -> SparseAutoencoder:
    row = Sae.objects.select_related("weights").get(pk=sae_id)
    # Sae.cfg is the SAELens cfg.json (a ReLU SAE is "standard" there), not a SaeConfig dict.
    return files.from_bytes(files.saelens_config(row.cfg), blob_read(row.weights)).to(device).eval()


def sae_on(sae_row: Sae, device: str = "cpu") -> SparseAutoencoder:
    """The SAE's module on ``device`` (cached by SAE and weights, so replaced weights reload)."""
    return _sae(sae_row.pk, sae_row.weights_id, device)


def source_sae(source: Source, device: str = "cpu") -> SparseAutoencoder:
    """The SAE of an SAE source, on ``device``."""
    return sae_on(Sae.objects.get(source=source), device)
