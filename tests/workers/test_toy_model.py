"""The toy_model command registers a trained toy model with its ground truth."""

from __future__ import annotations

import io

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Model, Score, Source, Unit
from workers.compute.toy import feature_dimensionality, neuron_features, true_features_per_neuron


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
