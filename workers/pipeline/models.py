"""Registering models in the catalog from what the loaders find on disk, in the local Hugging
Face cache, or (when online) on the hub."""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings
from django.db import transaction

from browser.catalog.models import Model
from browser.catalog.services import model_create, tokenizer_get_or_create
from workers.compute import hooks, hub, loading, tokenize


def _default_name(location: str) -> str:
    if location in loading.PACKAGED:
        return location
    stem = Path(location).stem if Path(location).suffix == ".gguf" else Path(location.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")[:100] or "model"


def _local_files(location: str) -> str:
    """A hub id's complete snapshot in the local cache (downloaded when online); other locations as given."""
    if location in loading.PACKAGED or not hub.is_hub_id(location):
        return location
    try:
        return str(hub.model_snapshot(location))
    except hub.HubFilesMissing as exc:
        raise loading.ModelLoadError(f"{exc} Nothing was registered.") from None


def model_register(*, location: str, name: str | None = None) -> Model:
    """Load a model's config and tokenizer and register it (clear errors for bad input)."""
    name = name or _default_name(location)
    if Model.objects.filter(name=name).exists():
        raise loading.ModelLoadError(f"a model named {name!r} is already registered")
    cache = Path(settings.CACHE_DIR)
    files_at = _local_files(location)
    config = loading.load_config(files_at, cache)
    arch = hooks.architecture_for(getattr(config, "model_type", "unknown"))
    n_layers, d_model, d_mlp = hooks.dims(config, arch)
    tok = loading.load_tokenizer(files_at, cache)
    strings = tokenize.display_strings(tok)
    special = sorted(int(i) for i in tok.all_special_ids)
    with transaction.atomic():
        tokenizer = tokenizer_get_or_create(
            name=name, vocab_hash=tokenize.vocab_hash(strings, special), tokens=strings, special_ids=special
        )
        return model_create(
            name=name,
            kind=Model.Kind.CAUSAL_LM if arch.causal else Model.Kind.ENCODER,
            architecture=arch.name,
            location=location,
            n_layers=n_layers,
            d_model=d_model,
            d_mlp=d_mlp,
            vocab_size=len(strings),
            tokenizer=tokenizer,
            config={"model_type": config.model_type},
        )


def model_get_or_register(name_or_location: str) -> Model:
    """A registered model by name; a packaged alias, path or hub id is registered on first use."""
    if "\x00" in name_or_location:  # no name, path or database text can hold it
        raise loading.ModelLoadError(f"unknown model {name_or_location!r}: a name cannot contain NUL")
    model = Model.objects.filter(name=name_or_location).first()
    if model is not None:
        return model
    existing = Model.objects.filter(location=name_or_location).first()
    if existing is not None:
        return existing
    known_kind = name_or_location in loading.PACKAGED or hub.is_hub_id(name_or_location)
    if not known_kind and not Path(name_or_location).expanduser().exists():
        known = ", ".join([*Model.objects.values_list("name", flat=True), *loading.PACKAGED]) or "none"
        raise loading.ModelLoadError(
            f"unknown model {name_or_location!r}: not registered, not a packaged alias, not a local path "
            f"and not a hub id ORG/NAME (known: {known})"
        )
    return model_register(location=name_or_location)
