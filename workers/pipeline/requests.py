"""A harvest asked for by name (the command line, or the API through a queued job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from browser.corpora.models import Corpus
from browser.runs.models import Run
from workers.compute.config import DEFAULT_HOOKS, HarvestConfig
from workers.compute.hooks import expand_hooks
from workers.pipeline.harvest import HarvestInputError, harvest_create, neuron_sources
from workers.pipeline.models import model_get_or_register
from workers.pipeline.saes import sae_sources

# Config fields a request may set by name (the rest have their HarvestConfig defaults).
REQUEST_FIELDS = ("k", "batch_size", "shard_contexts", "device", "dtype", "seed", "corr_stride")


def harvest_from_request(request: Mapping[str, Any], user: Any = None) -> tuple[Run, bool]:
    """Create (or find) the run a request describes: model, corpus, hooks (globs or "none"), saes
    (names), k, batch_size, shard_contexts, device, dtype, seed, include_special, corr_stride."""
    model = model_get_or_register(request["model"])
    corpus = None if "\x00" in request["corpus"] else Corpus.objects.filter(name=request["corpus"]).first()
    if corpus is None:
        names = ", ".join(Corpus.objects.values_list("name", flat=True)) or "none"
        raise HarvestInputError(f"no corpus named {request['corpus']!r} (imported: {names})")
    hooks = request.get("hooks", DEFAULT_HOOKS)
    neurons = () if hooks == "none" else neuron_sources(expand_hooks(hooks, model.n_layers))
    saes = sae_sources(model, [name.strip() for name in request.get("saes", []) if name.strip()])
    settings = {name: request[name] for name in REQUEST_FIELDS if name in request}
    config = HarvestConfig(sources=neurons + saes, exclude_special=not request.get("include_special", False),
                           **settings)
    return harvest_create(model=model, corpus=corpus, config=config, user=user)
