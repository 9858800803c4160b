"""Transcoders as a source kind, end to end on the tiny seeded BERT (MiniLM's architecture): trained as a
job (progress, loss curve, held-out FVU of the MLP output and L0), harvested like SAE features (they
read mlp.hook_in), shown on unit pages, exported in SAELens's and circuit-tracer's layouts and imported
back. References come from the model's own modules and from the exported weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from safetensors.torch import load_file

from browser.catalog.models import Model, Sae, Source, Unit
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import UnitStats
from browser.runs.models import Run
from tests.workers.test_sae import TEXTS
from workers.compute import hooks
from workers.compute.harvest import make_batch
from workers.compute.loading import load_torch_model
from workers.pipeline.saes import sae_find, sae_load

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_in"  # the tiny BERT: d_model 32
NAME = f"{HOOK}.transcoder-skip-64-k4"


@pytest.fixture
def corpus(tiny: Model, tmp_path: Path) -> Corpus:
    """tests/workers/test_sae.py's lines, tokenized for the tiny BERT (the conftest's ``tiny``)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", tokenizer="tiny", context_length=16, inline=True,
                 stdout=io.StringIO())
    return Corpus.objects.get(name="lines")


def _train(**options: object) -> io.StringIO:
    out = io.StringIO()
    settings: dict[str, object] = {"model": "tiny", "corpus": "lines", "hook": HOOK, "transcoder": True, "width": 64,
                                   "k": 4, "steps": 30, "batch_tokens": 32, "buffer_tokens": 128, "lr": 1e-2}
    call_command("train_sae", inline=True, stdout=out, **{**settings, **options})
    return out


def _mlp_pairs(model: Model, corpus: Corpus, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP inputs, MLP outputs) of the valid tokens of some contexts: the input from a hook on the
    layer's intermediate module, the output from BERT's own intermediate and output.dense modules."""
    torch_model = load_torch_model(model.location, Path("/nonexistent"), False, "cpu", "float32")
    arch = hooks.architecture_for("bert")
    rows = dict(Context.objects.filter(corpus=corpus, index__in=list(indices)).values_list("index", "tokens"))
    special = set(corpus.tokenizer.special_ids)
    batch = make_batch(list(indices), [decode_tokens(bytes(rows[i])) for i in indices], corpus.context_length,
                       special, True, 0)
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(torch_model, arch, [HOOK], model.n_layers, captured.__setitem__):
        hooks.forward(torch_model, batch.ids, batch.attention_mask)
    x = captured[HOOK][~batch.invalid]
    layer = torch_model.encoder.layer[0]
    with torch.no_grad():
        y = layer.output.dense(layer.intermediate(x))
    return x, y


def test_train_transcoder_job_measures_the_mlp_output_on_held_out_contexts(tiny: Model, corpus: Corpus) -> None:
    out = _train(skip=True)
    row = Sae.objects.select_related("source").get(source__name=NAME)
    assert "Trained transcoder" in out.getvalue() and "fvu" in out.getvalue()
    assert (row.source.kind, row.source.hook_point, row.cfg["architecture"], row.cfg["d_out"]) == (
        Source.Kind.TRANSCODER, HOOK, "skip_transcoder", tiny.d_model)
    assert {"fvu", "l0", "dead_fraction", "tokens"} <= set(row.quality) and 0 < row.quality["l0"] <= 4
    assert [p["step"] for p in row.loss_curve][:3] == [0, 10, 20] and row.loss_curve[-1]["step"] == 29
    assert Unit.objects.filter(source=row.source, kind=Source.Kind.TRANSCODER).count() == 64
    # The stored FVU, recomputed from BERT's own MLP modules on the held-out contexts.
    start, stop = row.cfg["held_out_contexts"]
    x, y = _mlp_pairs(tiny, corpus, range(start, stop))
    tc = sae_load(row)
    with torch.no_grad():
        fvu = float((tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert row.quality["tokens"] == x.shape[0]
    assert row.quality["fvu"] == pytest.approx(fvu, rel=1e-4)
    page = Client().get(f"/s/tiny/{NAME}/").content.decode()
    assert 'class="curve"' in page and "fraction of variance unexplained" in page


def test_bad_transcoder_requests_are_refused(tiny: Model, corpus: Corpus) -> None:
    with pytest.raises(CommandError, match="a transcoder reads an MLP's input: give --hook blocks.0.mlp.hook_in"):
        _train(hook="blocks.0.mlp.hook_post")
    with pytest.raises(CommandError, match="TopK"):
        _train(architecture="relu")
    with pytest.raises(CommandError, match="only a transcoder has a skip"):
        call_command("train_sae", model="tiny", corpus="lines", hook="blocks.0.mlp.hook_post", skip=True,
                     inline=True, stdout=io.StringIO())
    assert not Source.objects.filter(kind=Source.Kind.TRANSCODER).exists()


def test_transcoder_features_are_harvested_exported_and_imported_back(tiny: Model, corpus: Corpus,
                                                                       tmp_path: Path) -> None:
    _train()
    name = f"{HOOK}.transcoder-64-k4"
    call_command("harvest", model="tiny", corpus="lines", hooks="none", saes=name, k=4, inline=True,
                 stdout=io.StringIO())
    run = Run.objects.get()
    assert run.status == Run.Status.DONE, run.error
    # Exported in both layouts; the harvest's maxima and firing counts equal a reference encoding
    # written from circuit-tracer's published definition on the exported file.
    call_command("export_sae", name, str(tmp_path / "ct"), model="tiny", layout="circuit-tracer", stdout=io.StringIO())
    call_command("export_sae", name, str(tmp_path / "sl"), model="tiny", stdout=io.StringIO())
    w = load_file(str(tmp_path / "ct" / "layer_0.safetensors"))
    assert int(w["k"]) == 4 and w["W_enc"].shape == (64, tiny.d_model)
    x, _ = _mlp_pairs(tiny, corpus, range(corpus.n_contexts))
    pre = x @ w["W_enc"].T + w["b_enc"]
    top = pre.topk(4, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))  # [n, 64]
    stats = {s.unit.index: s for s in UnitStats.objects.filter(run=run).select_related("unit")}
    assert len(stats) == 64
    for index, s in stats.items():
        assert s.fire_count == int((acts[:, index] > 0).sum())
        if s.fire_count:
            assert s.max == pytest.approx(float(acts[:, index].max()), rel=1e-4)
    fired = max(stats, key=lambda i: stats[i].fire_count)
    page = Client().get(f"/u/tiny/{name}/{fired}/")
    assert page.status_code == 200 and "Transcoder feature" in page.content.decode()
    # Imported back from each layout: the same tensors, registered as transcoders again.
    call_command("import_sae", str(tmp_path / "ct" / "layer_0.safetensors"), model="tiny", name="back-ct",
                 stdout=io.StringIO())
    call_command("import_sae", str(tmp_path / "sl"), model="tiny", name="back-sl", stdout=io.StringIO())
    original = sae_load(sae_find(tiny, name)).tensors()
    for back in ("back-ct", "back-sl"):
        row = sae_find(tiny, back)
        assert row.source.kind == Source.Kind.TRANSCODER and row.source.hook_point == HOOK
        tensors = sae_load(row).tensors()
        assert tensors.keys() == original.keys()
        assert all(np.array_equal(tensors[key].numpy(), original[key].numpy()) for key in original)
    call_command("train_sae", model="tiny", corpus="lines", hook="blocks.0.mlp.hook_post", name="plain",
                 width=16, k=2, steps=2, batch_tokens=32, buffer_tokens=128, inline=True, stdout=io.StringIO())
    with pytest.raises(CommandError, match="is an SAE: circuit-tracer's layer files hold transcoders"):
        call_command("export_sae", "plain", str(tmp_path / "no"), model="tiny", layout="circuit-tracer")
