"""The toy_model command registers a trained toy model with its ground truth."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Model, Score, Source, Unit
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from workers.compute.toy import (
    feature_dimensionality,
    neuron_features,
    sample_features,
    true_features_per_neuron,
)
from workers.pipeline.toy import SOURCE_NAME


def _register(name: str, *extra: str) -> str:
    out = io.StringIO()
    call_command("toy_model", "--kind", "hidden_relu", "--n", "12", "--m", "4", "--p", "0.05", "--decay", "0.9",
                 "--seed", "0", "--instances", "2", "--steps", "300", "--name", name, *extra, stdout=out)
    return out.getvalue()


def test_registers_neurons_metrics_and_true_features(db: None) -> None:
    output = _register("toy-hidden")
    assert "Registered toy-hidden" in output
    model = Model.objects.get(name="toy-hidden")
    assert model.kind == Model.Kind.TOY and model.d_mlp == 4 and model.tokenizer is None
    source = Source.objects.get(model=model)
    assert (source.kind, source.n_units) == (Source.Kind.NEURONS, 4)
    assert sorted(Unit.objects.filter(source=source).values_list("index", flat=True)) == [0, 1, 2, 3]

    config = model.config
    W = torch.tensor(config["W"])  # [n_features, n_hidden]
    assert W.shape == (12, 4) and config["toy"]["feature_probability"] == 0.05
    assert config["feature_dimensionality"] == pytest.approx(feature_dimensionality(W).tolist(), abs=1e-6)
    assert config["dimensions_per_feature"] == pytest.approx(4 / float((W**2).sum()), rel=1e-5)
    assert config["instance"] == min(range(2), key=lambda i: config["loss"][i])

    scores = {s.unit.index: s for s in Score.objects.filter(unit__source=source, name="toy_true_features")}
    assert sorted(scores) == [0, 1, 2, 3]
    truth = true_features_per_neuron(W)
    for k, features in enumerate(neuron_features(W)):
        score = scores[k]
        assert score.value == pytest.approx(float(truth[k]), rel=1e-5)
        assert [(f["feature"], f["weight"]) for f in score.details["features"]] == [
            (f, pytest.approx(w, abs=1e-6)) for f, w in features
        ]
        assert score.details["count"] == len(features) >= 1


def test_relu_output_model_has_no_neuron_ground_truth(db: None) -> None:
    call_command("toy_model", "--kind", "relu_output", "--n", "5", "--m", "2", "--p", "0.05", "--instances", "2",
                 "--steps", "200", "--name", "toy-out", stdout=io.StringIO())
    model = Model.objects.get(name="toy-out")
    assert model.architecture == "toy_relu_output" and len(model.config["feature_norms"]) == 5
    assert Unit.objects.filter(source__model=model).count() == 2
    assert not Score.objects.filter(unit__source__model=model).exists()


def test_rejects_taken_names_and_bad_settings(db: None) -> None:
    _register("toy-once")
    with pytest.raises(CommandError, match="already registered"):
        _register("toy-once")
    with pytest.raises(CommandError, match="bad model name"):
        _register("no spaces")
    with pytest.raises(CommandError, match="probability"):
        call_command("toy_model", "--p", "0", "--name", "toy-bad", stdout=io.StringIO())
    with pytest.raises(CommandError, match="n_hidden"):
        call_command("toy_model", "--n", "3", "--m", "5", "--name", "toy-bad", stdout=io.StringIO())
    assert not Model.objects.filter(name="toy-bad").exists()


def test_harvested_toy_shows_inputs_as_features_and_scores_against_ground_truth(db: None, client: Client) -> None:
    """A toy model harvested over synthetic inputs: statistics equal a brute force over the same
    inputs, a neuron's top example holds its strongest true feature, and features_per_neuron
    from the true dictionary lands near each neuron's true number of features.

    Measured (n = 10, m = 5, p = 0.01, 50k inputs, about 70 interval and random examples a neuron):
    the score lies within 20% of the truth; at p = 0.003 it reads 8-22% low, because interval
    examples are stratified by octave, not drawn in proportion to how often each activation occurs.
    """
    torch.set_num_threads(1)
    out = io.StringIO()
    call_command("toy_model", "--kind", "hidden_relu", "--n", "10", "--m", "5", "--p", "0.01", "--decay", "0.8",
                 "--instances", "2", "--steps", "3000", "--name", "toy-h", "--harvest", "50000", stdout=out)
    model = Model.objects.get(name="toy-h")
    run = Run.objects.get(model=model)
    assert f"Harvested run #{run.pk}" in out.getvalue()
    W = torch.tensor(model.config["W"])
    x = sample_features([0.01], 50_000, 10, seed=1)[0]
    h = torch.relu(x @ W)  # [inputs, neurons]
    assert model.tokenizer is not None and model.tokenizer.tokens == [f"f{i}" for i in range(10)]
    assert Context.objects.filter(corpus=run.corpus).count() == 50_000
    for k, features in enumerate(neuron_features(W)):
        unit = Unit.objects.get(source__model=model, index=k)
        stats = UnitStats.objects.get(unit=unit, run=run)
        assert stats.fire_count == int((h[:, k] > 0).sum()) and stats.max == pytest.approx(float(h[:, k].max()))
        top = Example.objects.select_related("context").get(unit=unit, run=run, kind=Example.Kind.TOP, rank=0)
        ids = decode_tokens(bytes(top.context.tokens))
        ctx = top.context.index
        assert ctx == int(h[:, k].argmax()) and ids == x[ctx].nonzero().flatten().tolist()
        assert ids[top.max_pos] in {f for f, _ in features}  # a true feature brings the largest contribution
        values = np.frombuffer(bytes(top.values), dtype="<f2").astype(np.float32)
        assert values.tolist() == pytest.approx((W[ids, k] * x[ctx, ids]).tolist(), rel=2e-3, abs=1e-3)
        assert unit.top_token == f"f{ids[top.max_pos]}"
    top0 = Example.objects.select_related("context").get(unit__source__model=model, unit__index=0, run=run,
                                                         kind=Example.Kind.TOP, rank=0)
    page = client.get(f"/u/toy-h/{SOURCE_NAME}/0/")
    shown = decode_tokens(bytes(top0.context.tokens))[top0.max_pos]
    assert page.status_code == 200  # the input shown as its features, the largest contribution marked
    assert re.search(rf'class="tok mx" style="[^"]*" title="[^"]*">f{shown}</span>', page.content.decode())

    call_command("score", run=run.pk, inline=True, stdout=io.StringIO())
    truth = true_features_per_neuron(W, floor=0.0)
    for k in range(5):
        score = Score.objects.get(unit__source__model=model, unit__index=k, name="features_per_neuron")
        assert score.value == pytest.approx(float(truth[k]), rel=0.25), k
        assert score.details["inputs"] >= 40
    density = Score.objects.filter(unit__source__model=model, name="density").order_by("unit__index")
    assert [s.value for s in density] == pytest.approx((h > 0).double().mean(dim=0).tolist())
