"""Registering a synthetic set of activations (``workers/compute/synthetic.py``) as a catalog model.

The set becomes a one-layer model of kind synthetic whose activations stand at
``blocks.0.mlp.hook_post``: its m dimensions are neuron units, so SAEs trained on it register like
any SAE on a neuron hook (with decoder alignments to the neurons). The generator's name,
parameters and seed go to ``Model.config`` (the set is regenerated from them, never stored); each
neuron's true features become a ``synthetic_true_features`` Score (value: the effective number of
features in the neuron's energy; details: the features covering 90% of it).
"""

from __future__ import annotations

from typing import Any

import torch
from django.core.exceptions import ValidationError
from django.db import transaction

from browser.catalog.models import Model, Source, Unit, name_validator
from browser.catalog.services import model_create, scores_replace, source_get_or_create, units_ensure
from workers.compute import diagnosis, synthetic, toy

HOOK = "blocks.0.mlp.hook_post"
TRUE_FEATURES, TRUE_FEATURES_VERSION = "synthetic_true_features", 1
TRUTH_SAMPLES = 65_536
"""Samples the neurons' true feature shares are measured on (seed 0)."""
MAX_TOY_FEATURES = 2048
CHUNK_ELEMENTS = 1 << 24
"""Feature activations drawn at once while measuring the truth (64 MB of float32)."""


class SyntheticInputError(ValueError):
    """The synthetic set cannot be registered as asked; nothing was written."""


def _toy_params(params: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """Train the toy model the parameters describe; its best instance's W is stored with the set."""
    config = toy.ToyConfig.from_dict(params)
    if config.n_features > MAX_TOY_FEATURES:
        raise SyntheticInputError(f"toy sets are limited to {MAX_TOY_FEATURES} features")
    trained = toy.train_toy(config)
    W = trained.W[trained.best()]
    return {**config.to_dict(), "W": W.tolist()}, W


def synthetic_build(spec: dict[str, Any]) -> synthetic.SyntheticSet:
    """The set a model's ``config["synthetic"]`` describes."""
    params = dict(spec["params"])
    if spec["kind"] == "toy":
        return synthetic.toy_set(W=torch.tensor(params["W"]), p=float(params["feature_probability"]),
                                 kind=str(params["kind"]), seed=int(params.get("seed", 0)))
    return synthetic.generate(spec["kind"], params)


def synthetic_set_of(model: Model) -> synthetic.SyntheticSet:
    if model.kind != Model.Kind.SYNTHETIC:
        raise SyntheticInputError(f"{model.name} is not a synthetic set")
    return synthetic_build(model.config["synthetic"])


def synthetic_register(*, name: str, kind: str, params: dict[str, Any]) -> Model:
    """Build the set (checking its parameters) and register it with its neurons' true features."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise SyntheticInputError(f"bad model name {name!r}: {exc.messages[0]}") from None
    if Model.objects.filter(name=name).exists():
        raise SyntheticInputError(f"a model named {name!r} is already registered")
    W = None
    if kind == "toy":
        params, W = _toy_params(params)
    spec = {"kind": kind, "params": params}
    try:
        truth = synthetic_build(spec)
    except ValueError as exc:
        raise SyntheticInputError(str(exc)) from None
    sets, effective, found = _truth(truth)
    if W is not None and params["kind"] == "hidden_relu":
        sets = [[(f, round(w, 4)) for f, w in row] for row in toy.neuron_features(W)]
        effective = toy.true_features_per_neuron(W)
    summary = {"synthetic": spec, "n_features": truth.n_features, "true_l0": truth.true_l0(),
               "info": {k: v for k, v in truth.info.items() if k not in ("p", "plane")},
               "diagnosis_true_dictionary": diagnosis.summary(found, truth.info.get("cause"))}
    with transaction.atomic():
        model = model_create(name=name, kind=Model.Kind.SYNTHETIC, architecture=f"synthetic_{kind}",
                             location=f"synthetic:{kind}", n_layers=1, d_model=truth.d, d_mlp=truth.d,
                             vocab_size=0, tokenizer=None, config=summary)
        source = source_get_or_create(model=model, name=HOOK, hook_point=HOOK, layer=0, kind=Source.Kind.NEURONS,
                                      n_units=truth.d)
        units_ensure(source=source)
        _truth_store(source, sets, effective)
    return model


def _truth(truth: synthetic.SyntheticSet) -> tuple[list[list[tuple[int, float]]], torch.Tensor,
                                                     list[diagnosis.Diagnosis]]:
    """Neuron truth from E[a_f^2] over TRUTH_SAMPLES draws (seed 0), in chunks of at most
    CHUNK_ELEMENTS values; the true dictionary's diagnosis on the first chunk."""
    chunk = max(256, CHUNK_ELEMENTS // truth.n_features)
    generator = torch.Generator().manual_seed(0)
    total, done, found = torch.zeros(truth.n_features, dtype=torch.float64), 0, None
    while done < TRUTH_SAMPLES:
        features, _ = truth.draw(min(chunk, TRUTH_SAMPLES - done), generator)
        if found is None:
            found = diagnosis.diagnose(features, truth.directions)
        total += features.double().pow(2).sum(0)
        done += len(features)
    sets, effective = synthetic.neuron_truth_from_energy((total / done).float(), truth.directions)
    return sets, effective, found or []


def _truth_store(source: Source, sets: list[list[tuple[int, float]]], effective: torch.Tensor) -> None:
    units = dict(Unit.objects.filter(source=source).values_list("index", "pk"))
    scores_replace(run=None, unit_ids=list(units.values()), names=(TRUE_FEATURES,), version=TRUE_FEATURES_VERSION,
                   rows=((units[k], TRUE_FEATURES, float(effective[k]),
                          {"features": [{"feature": f, "share": s} for f, s in row[:32]], "count": len(row)})
                         for k, row in enumerate(sets)))
