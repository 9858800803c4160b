"""Registering a trained toy model of superposition in the catalog, with its ground truth.

The model (kind toy) gets one source, ``hidden``: its m hidden neurons as units. Its trained
weights and the paper's metrics go to ``Model.config``; for the hidden-ReLU model, where the
hidden basis is privileged, each neuron's true features become a ``toy_true_features`` Score so
the browser's own scores can be checked against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from django.core.exceptions import ValidationError
from django.db import transaction

from browser.catalog.models import Model, Score, Source, Unit, name_validator
from browser.catalog.services import model_create, source_get_or_create, units_ensure
from workers.compute import toy

SOURCE_NAME = "hidden"
HOOK_POINT = "hidden.hook_post"
TRUE_FEATURES, TRUE_FEATURES_VERSION = "toy_true_features", 1


class ToyModelError(ValueError):
    """The toy model cannot be registered (bad settings or a taken name)."""


def toy_summary(model: toy.ToyModel) -> dict[str, Any]:
    """The best instance's weights and the paper's metrics, as JSON for ``Model.config``."""
    best = model.best()
    W = model.W[best]  # [n_features, n_hidden]
    return {
        "toy": model.config.to_dict(),
        "instance": best,
        "loss": model.loss.tolist(),
        "W": W.tolist(),
        "b": model.b[best].tolist(),
        "feature_norms": toy.feature_norms(W).tolist(),
        "feature_dimensionality": toy.feature_dimensionality(W).tolist(),
        "dimensions_per_feature": float(toy.dimensions_per_feature(W)),
        "represented_features": int(toy.represented_features(W)),
    }


def toy_model_register(
    *, config: toy.ToyConfig, name: str, progress: Callable[[int, int], None] | None = None
) -> Model:
    """Train ``config`` and register its lowest-loss instance as a catalog model."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise ToyModelError(f"bad model name {name!r}: {exc.messages[0]}") from None
    if Model.objects.filter(name=name).exists():
        raise ToyModelError(f"a model named {name!r} is already registered")
    trained = toy.train_toy(config, progress)
    summary = toy_summary(trained)
    with transaction.atomic():
        model = model_create(
            name=name, kind=Model.Kind.TOY, architecture=f"toy_{config.kind}", location=f"toy:{config.kind}",
            n_layers=1, d_model=config.n_hidden, d_mlp=config.n_hidden, vocab_size=0, tokenizer=None,
            config=summary,
        )
        source = source_get_or_create(model=model, name=SOURCE_NAME, hook_point=HOOK_POINT, layer=0,
                                      kind=Source.Kind.NEURONS, n_units=config.n_hidden)
        units_ensure(source=source)
        if config.kind == "hidden_relu":
            _true_features_store(source, trained.W[summary["instance"]])
    return model


def _true_features_store(source: Source, W: torch.Tensor) -> int:
    """One ``toy_true_features`` Score per neuron: value = effective number of true features,
    details = the features driving it, strongest first."""
    units = dict(Unit.objects.filter(source=source).values_list("index", "pk"))
    effective = toy.true_features_per_neuron(W)
    rows = [
        Score(unit_id=units[k], name=TRUE_FEATURES, version=TRUE_FEATURES_VERSION, value=float(effective[k]),
              details={"features": [{"feature": f, "weight": w} for f, w in features], "count": len(features),
                       "floor": toy.NEURON_WEIGHT_FLOOR})
        for k, features in enumerate(toy.neuron_features(W))
    ]
    return len(Score.objects.bulk_create(rows))
