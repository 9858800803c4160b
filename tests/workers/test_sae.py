"""SAEs in the catalog: import/export commands, refusals that write nothing, training as a job,
and SAE features harvested in the same pass as the neurons, exact against brute force."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from safetensors.torch import load_file, save_file

from browser.catalog.models import Model, Sae, Source, Unit, UnitRelation
from browser.core.models import Blob
from browser.core.selectors import blob_read
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example, UnitStats
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_sae import build_tiny_gpt2, random_sae
from tests.compute.reference import brute_force
from workers.cli import run_here
from workers.compute import hooks
from workers.compute.config import HarvestConfig
from workers.compute.harvest import make_batch
from workers.compute.loading import load_torch_model
from workers.compute.sae import files
from workers.pipeline.harvest import UNIT_OFFSET_STRIDE, harvest_create, neuron_sources
from workers.pipeline.models import model_register
from workers.pipeline.saes import ALIGNED, NEAREST, sae_find, sae_sources
from workers.tasks import harvest_work

pytestmark = pytest.mark.slow
HOOK = "blocks.0.mlp.hook_post"  # the tiny BERT: 48 neurons a layer, d_model 32
TEXTS = [
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "All the world's a stage, and all the men and women merely players.",
]


@pytest.fixture
def tiny(db: None, tmp_path: Path) -> Model:
    return model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")


@pytest.fixture
def corpus(tiny: Model, tmp_path: Path) -> Corpus:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", tokenizer="tiny", context_length=16, inline=True,
                 stdout=io.StringIO())
    return Corpus.objects.get(name="lines")


def _saelens_dir(path: Path, d_in: int = 48, d_sae: int = 64, cfg: dict[str, object] | None = None) -> Path:
    sae = random_sae(d_in, d_sae, architecture="topk", k=8, seed=5, hook_name=HOOK)
    tensors = sae.tensors()
    tensors["b_enc"][:3] = -100.0  # three features that never fire
    files.write_dir(files.build(sae.cfg, tensors), path)
    if cfg:
        data = json.loads((path / "cfg.json").read_text())
        (path / "cfg.json").write_text(json.dumps({**data, **cfg}))
    return path


def _counts() -> tuple[int, ...]:
    return (Source.objects.count(), Sae.objects.count(), Blob.objects.count(), Unit.objects.count(),
            UnitRelation.objects.count())


def test_import_registers_units_and_relations_and_export_round_trips(tiny: Model, tmp_path: Path) -> None:
    path = _saelens_dir(tmp_path / "sae")
    out = io.StringIO()
    call_command("import_sae", str(path), model="tiny", name="sae-a", stdout=out)
    assert "Imported topk SAE tiny/sae-a: 64 features at blocks.0.mlp.hook_post" in out.getvalue()
    row = sae_find(tiny, "sae-a")
    assert (row.source.kind, row.source.n_units, row.d_in, row.source.layer) == ("sae", 64, 48, 0)
    assert Unit.objects.filter(source=row.source).count() == 64

    features = Unit.objects.filter(source=row.source)
    neurons = Unit.objects.filter(source__name=HOOK, source__kind="neurons")
    cosine = UnitRelation.objects.filter(unit__in=features, kind="decoder_cosine")
    assert cosine.count() == 64 * NEAREST and not cosine.exclude(other__in=features).exists()
    aligned = UnitRelation.objects.filter(unit__in=features, kind="alignment")
    assert aligned.count() == 64 * ALIGNED and not aligned.exclude(other__in=neurons).exists()
    reverse = UnitRelation.objects.filter(unit__in=neurons, kind="alignment")
    assert reverse.count() == 48 * ALIGNED and not reverse.exclude(other__in=features).exists()
    W_dec = load_file(str(path / "sae_weights.safetensors"))["W_dec"]
    shares = W_dec.abs() / W_dec.abs().sum(1, keepdim=True)
    first = aligned.get(unit__index=7, rank=0)
    assert first.other.index == int(shares[7].argmax()) and first.value == pytest.approx(float(shares[7].max()))
    top_of_neuron = reverse.get(unit__index=3, rank=0)
    assert top_of_neuron.other.index == int(shares[:, 3].argmax())

    call_command("export_sae", "sae-a", str(tmp_path / "out"), model="tiny", stdout=io.StringIO())
    exported, original = (load_file(str(p / "sae_weights.safetensors")) for p in (tmp_path / "out", path))
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    call_command("import_sae", str(tmp_path / "out"), model="tiny", name="sae-b", stdout=io.StringIO())
    stored = sae_find(tiny, "sae-b")
    again = files.from_bytes(files.saelens_config(stored.cfg), blob_read(stored.weights))
    assert all(torch.equal(again.tensors()[k], original[k]) for k in original)
    # A second SAE on the same neurons: each neuron keeps its top features over both.
    assert UnitRelation.objects.filter(unit__in=neurons, kind="alignment").count() == 48 * ALIGNED
    ties = UnitRelation.objects.filter(unit__in=neurons, kind="alignment", rank__lt=2, unit__index=3)
    assert {r.other.source.name for r in ties} == {"sae-a", "sae-b"}  # identical decoders tie


def _sparsify_dir(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    path.mkdir(parents=True)
    save_file({"encoder.weight": torch.randn(96, 32, generator=g), "encoder.bias": torch.zeros(96),
               "W_dec": torch.randn(96, 32, generator=g), "b_dec": torch.zeros(32)}, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"k": 8, "num_latents": 96, "d_in": 32, "expansion_factor": 3}))
    return path


def test_sparsify_directory_is_imported_at_the_given_hook(tiny: Model, tmp_path: Path) -> None:
    path = _sparsify_dir(tmp_path / "layers.1")
    call_command("import_sae", str(path), model="tiny", name="sp", hook="blocks.1.hook_resid_post",
                 stdout=io.StringIO())
    row = sae_find(tiny, "sp")
    assert (row.architecture, row.d_in, row.d_sae, row.cfg["k"], row.source.hook_point) == (
        "topk", 32, 96, 8, "blocks.1.hook_resid_post")
    # Residual-stream SAE: nearest features, but no neuron alignment.
    assert UnitRelation.objects.filter(unit__source=row.source, kind="decoder_cosine").count() == 96 * NEAREST
    assert not UnitRelation.objects.filter(kind="alignment").exists()


@pytest.mark.parametrize(
    ("setup", "options", "message"),
    [
        ("d_in", {}, r"d_in=32 values but tiny's blocks.0.mlp.hook_post has 48 \(d_mlp\)"),
        ("resid", {"hook": "blocks.1.hook_resid_post"}, r"d_in=48 values but .* has 32 \(d_model\)"),
        ("missing", {}, "missing W_dec"),
        ("shape", {}, r"b_enc has shape \[10\], expected \[64\]"),
        ("nan", {}, "W_enc holds NaN or infinite values"),
        ("arch", {}, "unsupported SAE architecture 'gated'"),
        ("hook", {}, "unknown hook point 'blocks.7.mlp.hook_post'"),
        ("nohook", {}, "the SAE names no hook point"),
        ("sparsify_nohook", {}, "the SAE names no hook point"),
        ("name", {"name": "bad name!"}, "bad SAE name"),
        ("taken", {"name": "blocks.0.mlp.hook_post"}, "already has a source named"),
        ("nothing", {}, "holds no cfg.json"),
    ],
)
def test_bad_saes_are_refused_and_nothing_is_registered(setup: str, options: dict[str, str], message: str,
                                                        tiny: Model, tmp_path: Path) -> None:
    path = tmp_path / "bad"
    if setup == "d_in":
        _saelens_dir(path, d_in=32)
    elif setup == "sparsify_nohook":
        _sparsify_dir(path)
    elif setup == "nothing":
        path.mkdir()
    else:
        cfg: dict[str, object] = {"architecture": "gated"} if setup == "arch" else {}
        cfg = {"hook_name": "blocks.7.mlp.hook_post"} if setup == "hook" else cfg
        _saelens_dir(path, cfg=cfg)
        if setup == "nohook":
            data = json.loads((path / "cfg.json").read_text())
            data["hook_name"], data["metadata"] = "", {}
            (path / "cfg.json").write_text(json.dumps(data))
        tensors = load_file(str(path / "sae_weights.safetensors"))
        if setup == "missing":
            del tensors["W_dec"]
        elif setup == "shape":
            tensors["b_enc"] = torch.zeros(10)
        elif setup == "nan":
            tensors["W_enc"][0, 0] = float("nan")
        save_file(tensors, str(path / "sae_weights.safetensors"))
    if setup == "taken":
        Source.objects.create(model=tiny, name=HOOK, hook_point=HOOK, layer=0, kind="neurons", n_units=48)
    before = _counts()
    with pytest.raises(CommandError, match=message):
        call_command("import_sae", str(path), model="tiny", **{"name": "sae-x", **options})
    assert _counts() == before


def _encoded_activations(model: Model, corpus: Corpus, batch_size: int, encode: object) -> tuple[np.ndarray, np.ndarray]:
    """Every context's activations at HOOK, encoded by a reference written from the raw tensors."""
    arch = hooks.architecture_for(model.config["model_type"])
    torch_model = load_torch_model(model.location, Path("/nonexistent"), arch.causal, "cpu", "float32")
    rows = list(Context.objects.filter(corpus=corpus).order_by("index").values_list("index", "tokens"))
    acts, invalid = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = make_batch([i for i, _ in chunk], [decode_tokens(bytes(t)) for _, t in chunk], corpus.context_length,
                           set(corpus.tokenizer.special_ids), True, 0)
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(torch_model, arch, [HOOK], model.n_layers, captured.__setitem__):
            hooks.forward(torch_model, batch.ids, batch.attention_mask)
        acts.append(encode(captured[HOOK]))  # type: ignore[operator]
        invalid.append(batch.invalid)
    return torch.cat(acts).numpy(), torch.cat(invalid).numpy()


def test_sae_features_harvested_with_the_neurons_equal_brute_force(tiny: Model, corpus: Corpus,
                                                                   tmp_path: Path) -> None:
    path = _saelens_dir(tmp_path / "sae")
    call_command("import_sae", str(path), model="tiny", name="feat", stdout=io.StringIO())
    config = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(tiny, ["feat"]), k=4,
                           samples_per_interval=3, n_intervals=4, hist_stride=3, batch_size=4)
    run, _ = harvest_create(model=tiny, corpus=corpus, config=config)
    run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error

    t = load_file(str(path / "sae_weights.safetensors"))

    def reference(x: torch.Tensor) -> torch.Tensor:  # SAELens TopK, k = 8
        pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
        top = pre.topk(8, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    acts, invalid = _encoded_activations(tiny, corpus, config.batch_size, reference)
    want = brute_force(acts, invalid, k=4, samples=3, n_intervals=4, hist_stride=3, seed=0,
                       unit_offset=1 * UNIT_OFFSET_STRIDE)
    ctx_index = dict(Context.objects.filter(corpus=corpus).values_list("id", "index"))
    units = Unit.objects.filter(source__name="feat").order_by("index")
    assert units.count() == 64
    for unit in units:
        w = want[unit.index]
        w_top = cast(list[tuple[int, float]], w["top"])
        stats = UnitStats.objects.get(unit=unit, run=run)
        assert (stats.n_tokens, stats.fire_count) == (w["n_tokens"], w["fire"])
        assert stats.max == pytest.approx(w["max"], rel=1e-5, abs=1e-6)
        assert np.frombuffer(bytes(stats.hist), dtype="<i8").tolist() == w["hist"]
        examples = Example.objects.filter(unit=unit, run=run)
        top = [(ctx_index[e.context_id], e.max_value) for e in examples.filter(kind=0).order_by("rank")]
        assert [c for c, _ in top] == [c for c, _ in w_top]
        assert [v for _, v in top] == pytest.approx([v for _, v in w_top], rel=1e-5)
        intervals: dict[int, list[int]] = {}
        for e in examples.filter(kind=1).order_by("-bucket", "rank"):
            intervals.setdefault(e.bucket, []).append(ctx_index[e.context_id])
        w_intervals = cast(list[tuple[int, list[tuple[int, float]]]], w["intervals"])
        assert list(intervals.items()) == [(b, [c for c, _ in m]) for b, m in w_intervals]
        random = [ctx_index[e.context_id] for e in examples.filter(kind=2).order_by("rank")]
        assert random == [c for c, _ in cast(list[tuple[int, float]], w["random"])]
        assert unit.dead == (w["fire"] == 0)
    dead = set(units.filter(dead=True).values_list("index", flat=True))
    assert {0, 1, 2} <= dead and len(dead) < 64 - 10  # the planted dead features are marked, not hidden
    assert UnitStats.objects.filter(run=run, unit__source__name=HOOK).count() == 48  # the neurons too


def test_train_sae_command_trains_measures_and_registers(tiny: Model, corpus: Corpus) -> None:
    out = io.StringIO()
    call_command("train_sae", model="tiny", corpus="lines", hook=HOOK, width=64, k=4, steps=30, batch_tokens=32,
                 buffer_tokens=128, lr=1e-2, inline=True, stdout=out)
    row = Sae.objects.get(source__name=f"{HOOK}.sae-topk-64-k4")
    assert "Trained SAE" in out.getvalue() and "fvu" in out.getvalue()
    assert {"fvu", "l0", "dead_fraction", "tokens"} <= set(row.quality) and 0 < row.quality["l0"] <= 4
    assert 0 <= row.quality["fvu"] < 1.5 and row.cfg["training"]["steps"] == 30
    assert [p["step"] for p in row.loss_curve][:3] == [0, 10, 20] and row.loss_curve[-1]["step"] == 29
    assert Unit.objects.filter(source=row.source).count() == 64 and Blob.objects.filter(pk=row.weights_id).exists()
    page = Client().get(f"/s/tiny/{row.source.name}/").content.decode()
    assert "SAE: TopK" in page and "fraction of variance unexplained" in page and 'class="curve"' in page
    assert f"{row.quality['fvu']:.4f}".rstrip("0") in page
    with pytest.raises(CommandError, match="already has a source named"):
        call_command("train_sae", model="tiny", corpus="lines", hook=HOOK, width=64, k=4, steps=30, inline=True)
    with pytest.raises(CommandError, match="unknown hook point"):
        call_command("train_sae", model="tiny", corpus="lines", hook="blocks.5.mlp.hook_post", inline=True)


def test_causal_lm_sae_has_logit_effects_and_loss_recovered(db: None, tmp_path: Path) -> None:
    gpt = model_register(location=str(build_tiny_gpt2(tmp_path / "gpt")), name="gpt")
    (tmp_path / "a.txt").write_text(" ".join(TEXTS * 4))
    call_command("import_corpus", str(tmp_path / "a.txt"), name="g", tokenizer="gpt", context_length=16,
                 inline=True, stdout=io.StringIO())
    hook = "blocks.1.mlp.hook_post"
    call_command("train_sae", model="gpt", corpus="g", hook=hook, name="g-sae", width=48, k=4, steps=20,
                 batch_tokens=32, buffer_tokens=128, inline=True, stdout=io.StringIO())
    row = sae_find(gpt, "g-sae")
    q = row.quality
    assert q["ce_zero"] != pytest.approx(q["ce_clean"], rel=1e-4)
    assert q["loss_recovered"] == pytest.approx((q["ce_zero"] - q["ce_sae"]) / (q["ce_zero"] - q["ce_clean"]))

    call_command("harvest", model="gpt", corpus="g", hooks="none", saes="g-sae", k=4, inline=True,
                 stdout=io.StringIO())
    torch_model = load_torch_model(gpt.location, Path("/nonexistent"), True, "cpu", "float32")
    sae = files.from_bytes(files.saelens_config(row.cfg), blob_read(row.weights))
    feature = 5
    # Through the MLP's down projection (GPT-2's Conv1D: [d_mlp, d_model]), the final norm's
    # weight and the unembedding.
    direction = sae.W_dec[feature].detach() @ torch_model.transformer.h[1].mlp.c_proj.weight.detach()
    # ln_f is a LayerNorm: it removes the direction's mean before scaling by its weight.
    logits = torch_model.lm_head.weight.detach() @ ((direction - direction.mean())
                                                    * torch_model.transformer.ln_f.weight.detach())
    unit = Unit.objects.get(source=row.source, index=feature)
    assert [t for t, _ in unit.logit_effects["up"]] == torch.topk(logits, 10).indices.tolist()
    assert [t for t, _ in unit.logit_effects["down"]] == torch.topk(-logits, 10).indices.tolist()


def test_the_sae_cache_is_keyed_by_content_not_by_row_ids(tiny: Model, tmp_path: Path) -> None:
    """Ids say nothing across databases: a process that loaded one database's SAE got it back for
    another database's SAE of the same ids (the suite's processes talk to several). Simulated in one
    database by giving the same rows other weights."""
    import hashlib

    from django.db import connection

    from workers.compute.sae.model import SparseAutoencoder
    from workers.pipeline.saes import sae_load

    call_command("import_sae", str(_saelens_dir(tmp_path / "a")), model="tiny", name="sae-a", stdout=io.StringIO())
    row = sae_find(tiny, "sae-a")
    first = sae_load(row).tensors()
    tensors = {name: value.clone() for name, value in first.items()}
    tensors["W_enc"] += 1.0
    data = files.to_bytes(SparseAutoencoder(sae_load(row).cfg, tensors))
    with connection.cursor() as cursor:  # the same Sae and Blob ids, other content
        cursor.execute("DELETE FROM core_blobchunk WHERE blob_id = %s", [row.weights_id])
        cursor.execute("INSERT INTO core_blobchunk (blob_id, index, data) VALUES (%s, 0, %s)", [row.weights_id, data])
        cursor.execute("UPDATE core_blob SET size = %s, sha256 = %s WHERE id = %s",
                       [len(data), hashlib.sha256(data).hexdigest(), row.weights_id])
    again = sae_load(sae_find(tiny, "sae-a")).tensors()
    assert torch.equal(again["W_enc"], tensors["W_enc"]) and not torch.equal(again["W_enc"], first["W_enc"])
