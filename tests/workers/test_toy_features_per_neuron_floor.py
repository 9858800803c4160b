"""A harvested toy model's features_per_neuron is counted like a real neuron's: features that carry
under 1% of the neuron's mass (``scores.FPN_MIN_SHARE``) are left out.

The toy's weights are planted by hand: neuron 0 reads features 0 and 1 with weight 1, neuron 1
reads feature 0 alone; both also read 60 faint features with weight 0.02 (each under 1% of the
neuron's mass, together over a third of it when every input is counted). The truth is 2 and 1
features; the unfloored effective number (the score before this rule) read 2.8 for neuron 0.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from django.core.management import call_command

from browser.catalog.models import Model, Score, Source
from browser.catalog.services import model_create, source_get_or_create, units_ensure
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from workers.compute.toy import ToyConfig
from workers.pipeline.toy import HOOK_POINT, SOURCE_NAME, toy_harvest

N_FAINT, FAINT = 60, 0.02


def _planted_toy() -> Model:
    n = 2 + N_FAINT
    W = torch.zeros(n, 2)
    W[0, 0] = W[1, 0] = W[0, 1] = 1.0
    W[2:, :] = FAINT
    settings = ToyConfig(kind="hidden_relu", n_features=n, n_hidden=2, feature_probability=0.02, steps=1)
    model = model_create(name="toy-planted", kind=Model.Kind.TOY, architecture="toy_hidden_relu",
                         location="toy:hidden_relu", n_layers=1, d_model=2, d_mlp=2, vocab_size=0,
                         tokenizer=None, config={"toy": settings.to_dict(), "W": W.tolist()})
    source = source_get_or_create(model=model, name=SOURCE_NAME, hook_point=HOOK_POINT, layer=0,
                                  kind=Source.Kind.NEURONS, n_units=2)
    units_ensure(source=source)
    return model


def _effective(masses: list[float], min_share: float) -> float:
    """exp(entropy) of the shares >= min_share, renormalised, written out by hand."""
    total = sum(masses)
    kept = [m / total for m in masses if m > 0 and m / total >= min_share]
    q = [s / sum(kept) for s in kept]
    return math.exp(-sum(s * math.log(s) for s in q))


def test_toy_features_per_neuron_leaves_out_features_under_the_floor(db: None) -> None:
    torch.set_num_threads(1)
    model = _planted_toy()
    run = toy_harvest(model=model, n_inputs=20_000, seed=3)
    call_command("score", run=run.pk, inline=True, stdout=io.StringIO())
    for neuron, truth in ((0, 2.0), (1, 1.0)):
        mass: dict[int, float] = defaultdict(float)
        seen = set()
        rows = Example.objects.filter(run=run, unit__index=neuron, unit__source__model=model,
                                      kind__in=[Example.Kind.INTERVAL, Example.Kind.RANDOM])
        for context_id, ids, values in rows.values_list("context_id", "context__tokens", "values"):
            if context_id not in seen:
                seen.add(context_id)
                for f, v in zip(decode_tokens(bytes(ids)), np.frombuffer(bytes(values), dtype="<f2"), strict=True):
                    mass[f] += abs(float(v))
        score = Score.objects.get(unit__source__model=model, unit__index=neuron, name="features_per_neuron")
        assert score.value == pytest.approx(_effective(list(mass.values()), 0.01), rel=1e-6)
        assert score.value == pytest.approx(truth, rel=0.1)
        unfloored = _effective(list(mass.values()), 0.0)
        assert unfloored > 1.25 * truth  # the faint features are there: the unfloored count reads them
        assert score.details["inputs"] == len(seen)
