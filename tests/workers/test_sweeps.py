"""Synthetic sets registered like toy models, and SAE sweeps on them: the known best sparsity is
recovered, each SAE stores its recovery metrics, a rerun trains nothing twice."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Model, Sae, Score, Source
from browser.runs.models import Job
from workers.compute import synthetic
from workers.pipeline.sweeps import best_by, sweep_results
from workers.pipeline.synthetic import HOOK, TRUE_FEATURES, synthetic_set_of

PARAMS = '{"n": 64, "m": 32, "l0": 3.0, "seed": 0}'


def _register(name: str = "synth-small", kind: str = "superposition", params: str = PARAMS) -> str:
    out = io.StringIO()
    call_command("synthetic_set", "--name", name, "--kind", kind, "--params", params, stdout=out)
    return out.getvalue()


def test_registers_neurons_with_their_true_features(db: None) -> None:
    assert "64 true features in 32 dims, true L0 3" in _register()
    model = Model.objects.get(name="synth-small")
    assert model.kind == Model.Kind.SYNTHETIC and model.d_mlp == 32
    source = Source.objects.get(model=model)
    assert (source.hook_point, source.kind, source.n_units) == (HOOK, Source.Kind.NEURONS, 32)
    truth = synthetic_set_of(model)
    expected = synthetic.superposition(n=64, m=32, l0=3.0, seed=0)
    assert torch.equal(truth.directions, expected.directions)  # regenerated from the stored parameters
    scores = Score.objects.filter(unit__source=source, name=TRUE_FEATURES).order_by("unit__index")
    assert scores.count() == 32
    # by hand, neuron 5: energy shares p_f E[a^2] D[f, 5]^2 (equal p and magnitudes: D^2 shares)
    d2 = expected.directions[:, 5] ** 2
    shares = d2 / d2.sum()
    by_hand = float(torch.exp(-(shares * shares.log()).sum()))
    assert scores[5].value == pytest.approx(by_hand, rel=0.05)
    with pytest.raises(CommandError, match="already registered"):
        _register()
    with pytest.raises(CommandError, match="bad parameters"):
        _register("synth-bad", params='{"n": 4}')


def test_sweep_recovers_the_true_l0_and_stores_recovery(db: None, client: Client, tmp_path: Path) -> None:
    _register()
    out = io.StringIO()
    args = ["--synthetic", "synth-small", "--architectures", "topk", "--widths", "64", "--sparsities", "1,3,9",
            "--steps", "400", "--inline"]
    call_command("sae_sweep", *args, stdout=out)
    model = Model.objects.get(name="synth-small")
    results = sweep_results(model)
    assert len(results) == 3
    best = best_by(results, "f1")["topk"]
    assert best["sparsity"] == 3  # the true L0
    assert "best topk by F1: sparsity 3" in out.getvalue()
    for row in results:
        assert 0 <= row["mcc"] <= 1 and row["true_l0"] == pytest.approx(3.0, rel=0.05)
        assert row["l0"] == pytest.approx(row["sparsity"], rel=0.1)
    assert best["mcc"] > 0.95
    sae = Sae.objects.get(source__name=best["name"])
    assert sae.source.hook_point == HOOK and sae.cfg["training"]["k"] == 3
    # a rerun of the job trains nothing twice
    job = Job.objects.get(pk=sae.cfg["sweep"])
    from workers.jobs import Progress
    from workers.pipeline.sweeps import sweep_work

    before = Sae.objects.count()
    sweep_work(job, Progress(job.pk))
    assert Sae.objects.count() == before
    # the neurons' source page plots the sweep: one line per architecture, the true L0 marked
    html = client.get(f"/s/synth-small/{HOOK}/").content.decode()
    assert "SAE sweeps at this hook" in html and 'aria-label="F1 against L0 for each architecture"' in html
    assert "<title>true L0 3" in html and "topk (64): F1" in html
    assert all(row["name"] in html for row in results)
    assert "Planted cause of polysemanticity: <strong>superposition</strong>" in html
    assert "superposition for 32 of the 32 neurons" in html  # the true dictionary names every neuron
    assert all(row["diagnosis"]["planted"] == "superposition" for row in results)
    assert best["diagnosis_accuracy"] == best["diagnosis"]["causes"].get("superposition", 0) / 32
    twin = client.get(f"/api/v1/sources/synth-small/{HOOK}/sweeps/").json()
    assert twin["synthetic"] and twin["true_l0"] == pytest.approx(3.0)
    assert {s["name"] for s in twin["saes"]} == {row["name"] for row in results}
    assert next(s for s in twin["saes"] if s["name"] == best["name"])["quality"]["f1"] == pytest.approx(best["f1"])
    # its quality travels as a SAEBench core result and back
    path = tmp_path / "core.json"
    call_command("saebench", "export", best["name"], str(path), "--model", "synth-small", stdout=io.StringIO())
    call_command("saebench", "import", best["name"], str(path), "--model", "synth-small", stdout=io.StringIO())
    sae.refresh_from_db()
    assert sae.quality["saebench"] == pytest.approx({k: sae.quality[k] for k in ("fvu", "l0", "dead_fraction",
                                                                                  "dense_fraction")})


def test_sweep_refuses_bad_grids(db: None) -> None:
    _register()
    with pytest.raises(CommandError, match="unknown architectures"):
        call_command("sae_sweep", "--synthetic", "synth-small", "--architectures", "gated", "--inline")
    with pytest.raises(CommandError, match="no synthetic set"):
        call_command("sae_sweep", "--synthetic", "nope", "--inline")


def test_relu_and_jumprelu_moved_to_the_true_l0(db: None) -> None:
    """With --match-true-l0 the ReLU and JumpReLU SAEs are measured at the set's true L0 (3), whatever
    their coefficient trained them to; the trained L0 is kept beside it."""
    _register()
    call_command("sae_sweep", "--synthetic", "synth-small", "--architectures", "relu,jumprelu", "--widths", "64",
                 "--l1", "0.01", "--l0", "0.0001", "--steps", "150", "--match-true-l0", "--inline",
                 stdout=io.StringIO())
    rows = sweep_results(Model.objects.get(name="synth-small"))
    assert sorted(r["architecture"] for r in rows) == ["jumprelu", "relu"]
    for row in rows:
        assert row["l0"] == pytest.approx(3.0, rel=0.1), row
        assert abs(row["trained_l0"] - 3.0) > 0.5 and "l0_offset" in row  # the coefficient alone missed it
