"""Registering a compression-hypothesis sweep (``workers.compute.compression``) as a toy model whose
config holds the curve; its toy page draws it."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.core.exceptions import ValidationError

from browser.catalog.models import Model, name_validator
from browser.catalog.services import model_create
from workers.compute import compression
from workers.pipeline.toy import ToyModelError

ARCHITECTURE = "toy_compression"


def compression_register(*, config: compression.CompressionConfig, name: str,
                         progress: Callable[[int, int], None] | None = None) -> Model:
    """Train the grid and register it as a toy model named ``name`` (config["compression"])."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise ToyModelError(f"bad model name {name!r}: {exc.messages[0]}") from None
    if Model.objects.filter(name=name).exists():
        raise ToyModelError(f"a model named {name!r} is already registered")
    started = time.monotonic()
    W = compression.train_pairs(config, progress)
    result = {"config": config.to_dict(), "curve": compression.curve(config, W),
              "train_seconds": round(time.monotonic() - started, 1)}
    return model_create(name=name, kind=Model.Kind.TOY, architecture=ARCHITECTURE, location="toy:compression",
                        n_layers=1, d_model=config.n_hidden, d_mlp=config.n_hidden, vocab_size=0, tokenizer=None,
                        config={"compression": result})
