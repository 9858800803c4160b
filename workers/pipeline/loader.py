"""The one place that loads models, tokenizers and SAEs onto a device, cached per worker process.

Harvests, score jobs, label scores, probes and interventions all ask here, so a worker loads a
model once however many kinds of task it serves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Model, Sae, Source
from browser.core.models import Blob
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
def _sae(weights_sha256: str, cfg_json: str, device: str, weights: Blob) -> SparseAutoencoder:
    # Sae.cfg is the SAELens cfg.json (a ReLU SAE is "standard" there), not a SaeConfig dict.
    return files.from_bytes(files.saelens_config(json.loads(cfg_json)), blob_read(weights)).to(device).eval()


def sae_on(sae_row: Sae, device: str = "cpu") -> SparseAutoencoder:
    """The SAE's module on ``device``, cached by what it is made of (the weights' SHA-256 and the
    config), not by row ids: ids say nothing across databases (a process that has talked to two,
    as the test suite's do, got another database's SAE of the same ids), and replaced weights or
    config reload."""
    weights = sae_row.weights
    return _sae(weights.sha256, json.dumps(sae_row.cfg, sort_keys=True), device, weights)


def source_sae(source: Source, device: str = "cpu") -> SparseAutoencoder:
    """The SAE of an SAE source, on ``device``."""
    return sae_on(Sae.objects.get(source=source), device)
