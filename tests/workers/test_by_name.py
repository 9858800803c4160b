"""Models and SAEs by name (`register_model ORG/NAME`, `import_sae --release/--repo`), resolved
through a local folder laid out like the Hugging Face hub cache that stands in for the network."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
import torch
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError
from safetensors.numpy import save_file as save_numpy

from browser.catalog.models import Model, Sae
from fixtures.hub_cache import put_files
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_sae import random_sae
from workers.compute.sae import files, registry
from workers.pipeline.saes import sae_load

pytestmark = pytest.mark.slow
GEMMA_RELEASE, GEMMA_ID = "gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"
GEMMA_REPO, GEMMA_FILE = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82/params.npz"
D_MODEL, D_MLP, D_SAE = 32, 48, 64  # the tiny BERT's widths


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_CACHE at an empty folder; any download attempt fails the test (the network is outside)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network("hf_hub_download"))
    real_snapshot = huggingface_hub.snapshot_download

    def local_snapshot(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("local_files_only"):
            raise AssertionError("snapshot_download tried the network")
        return real_snapshot(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", local_snapshot)
    return tmp_path / "hub"


def _no_network(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} tried the network")
    return refuse


@pytest.fixture
def tiny_hub(cache: Path, tmp_path: Path) -> Path:
    """A tiny random BERT saved with save_pretrained into models--org--tiny/snapshots/HASH/."""
    return put_files(cache, "org/tiny", {".": build_tiny_bert(tmp_path / "tiny")})


@pytest.fixture
def tiny(db: None, tiny_hub: Path) -> Model:
    call_command("register_model", "org/tiny", stdout=io.StringIO())
    return Model.objects.get(name="tiny")


def _counts() -> dict[str, int]:
    return {m._meta.db_table: m._default_manager.count() for m in apps.get_models()}


def _gemma_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D_MODEL, D_SAE)).astype(np.float32),
            "W_dec": rng.normal(size=(D_SAE, D_MODEL)).astype(np.float32),
            "b_enc": rng.normal(size=D_SAE).astype(np.float32), "b_dec": rng.normal(size=D_MODEL).astype(np.float32),
            "threshold": rng.uniform(0.1, 1.0, size=D_SAE).astype(np.float32)}


def _npz_bytes(params: dict[str, np.ndarray], tmp_path: Path) -> bytes:
    np.savez(tmp_path / "p.npz", **params)
    return (tmp_path / "p.npz").read_bytes()


# ---- models by name ----------------------------------------------------------------------------
def test_register_model_by_hub_id_reads_the_local_cache_without_the_network(tiny: Model) -> None:
    assert (tiny.location, tiny.architecture, tiny.n_layers, tiny.d_model, tiny.d_mlp) == ("org/tiny", "bert", 2,
                                                                                          D_MODEL, D_MLP)
    assert tiny.tokenizer.tokens[:1] == ["[PAD]"]


def test_a_model_missing_a_file_offline_says_what_to_download_and_registers_nothing(
        db: None, tiny_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tiny_hub / "model.safetensors").unlink()
    before = _counts()
    with pytest.raises(CommandError) as caught:
        call_command("register_model", "org/tiny", stdout=io.StringIO())
    message = str(caught.value)
    assert "model.safetensors of hub repo org/tiny" in message and "HF_HUB_OFFLINE is set" in message
    assert "hf download org/tiny 'model.safetensors'" in message and "Nothing was registered" in message
    assert _counts() == before


# ---- SAEs by release and id --------------------------------------------------------------------
def test_import_sae_by_release_and_id_resolves_gemma_scope_through_the_table(
        tiny: Model, cache: Path, tmp_path: Path) -> None:
    params = _gemma_params()
    put_files(cache, GEMMA_REPO, {GEMMA_FILE: _npz_bytes(params, tmp_path)})
    out = io.StringIO()
    # Gemma Scope's hook is layer 12 of Gemma 2; the tiny model has 2 layers, so the hook is given.
    call_command("import_sae", "--release", GEMMA_RELEASE, "--id", GEMMA_ID, "--model", "tiny",
                 "--hook", "blocks.1.hook_resid_post", stdout=out)
    row = Sae.objects.select_related("source").get(source__model=tiny)
    assert row.source.name == "gemma-scope-2b-pt-res.layer_12.width_16k.average_l0_82"
    assert (row.architecture, row.d_in, row.d_sae, row.source.hook_point) == ("jumprelu", D_MODEL, D_SAE,
                                                                              "blocks.1.hook_resid_post")
    assert (row.cfg["release"], row.cfg["sae_id"], row.cfg["repo_id"]) == (GEMMA_RELEASE, GEMMA_ID, GEMMA_REPO)
    x = np.random.default_rng(1).normal(size=(8, D_MODEL)).astype(np.float32)
    pre = x @ params["W_enc"] + params["b_enc"]  # Gemma Scope's published JumpReLU
    want = (pre > params["threshold"]) * np.maximum(pre, 0)
    got = sae_load(row).encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "Imported jumprelu SAE tiny/gemma-scope-2b-pt-res" in out.getvalue()


def test_a_saelens_layout_release_fetches_cfg_and_weights(tiny: Model, cache: Path, tmp_path: Path) -> None:
    sae = random_sae(D_MODEL, D_SAE, architecture="relu", k=None).with_config(hook_name="blocks.1.hook_resid_post")
    files.write_dir(sae, tmp_path / "saelens")
    put_files(cache, "jbloom/GPT2-Small-SAEs-Reformatted", {"blocks.8.hook_resid_pre": tmp_path / "saelens"})
    call_command("import_sae", "--release", "gpt2-small-res-jb", "--id", "blocks.8.hook_resid_pre", "--model",
                 "tiny", "--hook", "blocks.1.hook_resid_post", "--name", "jb8", stdout=io.StringIO())
    row = Sae.objects.get(source__model=tiny, source__name="jb8")
    assert row.cfg["neuronpedia"] == "gpt2-small/8-res-jb"
    for name, tensor in sae.tensors().items():
        assert torch.equal(sae_load(row).tensors()[name], tensor), name


def test_the_release_tables_encoding_overrides_apply_over_cfg_json(tiny: Model, cache: Path, tmp_path: Path) -> None:
    sae = random_sae(D_MODEL, D_SAE, architecture="relu", k=None).with_config(hook_name="blocks.1.hook_resid_post")
    files.write_dir(sae, tmp_path / "saelens")  # its cfg.json says normalize_activations "none"
    put_files(cache, "JoshEngels/Mistral-7B-Residual-Stream-SAEs", {"mistral_7b_layer_8": tmp_path / "saelens"})
    call_command("import_sae", "--release", "mistral-7b-res-wg", "--id", "blocks.8.hook_resid_pre", "--model",
                 "tiny", "--hook", "blocks.1.hook_resid_post", stdout=io.StringIO())
    row = Sae.objects.get(source__model=tiny)
    assert sae_load(row).cfg.normalize_activations == "constant_norm_rescale"  # the release's config_overrides


def test_a_release_missing_offline_names_the_release_repo_and_files_and_registers_nothing(
        tiny: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _counts()
    with pytest.raises(CommandError) as caught:
        call_command("import_sae", "--release", GEMMA_RELEASE, "--id", GEMMA_ID, "--model", "tiny",
                     "--hook", "blocks.1.hook_resid_post", stdout=io.StringIO())
    message = str(caught.value)
    assert f"release '{GEMMA_RELEASE}'" in message and f"{GEMMA_FILE} of hub repo {GEMMA_REPO}" in message
    assert f"hf download {GEMMA_REPO} '{GEMMA_FILE}'" in message and "nothing registered" in message
    assert _counts() == before


def test_the_release_hook_is_checked_before_any_download(tiny: Model) -> None:
    with pytest.raises(CommandError, match="blocks.12.hook_resid_post, which tiny cannot hook"):
        call_command("import_sae", "--release", GEMMA_RELEASE, "--id", GEMMA_ID, "--model", "tiny",
                     stdout=io.StringIO())


def test_unknown_release_ids_are_refused_with_close_matches(tiny: Model) -> None:
    with pytest.raises(CommandError, match="has no SAE id 'layer_12/width_16k/average_l0_8'.*average_l0_82"):
        call_command("import_sae", "--release", GEMMA_RELEASE, "--id", "layer_12/width_16k/average_l0_8",
                     "--model", "tiny", stdout=io.StringIO())


# ---- hub repos: sparsify SAEs and transcoders --------------------------------------------------
def test_import_sae_from_a_sparsify_hub_repo_folder(tiny: Model, cache: Path) -> None:
    rng = np.random.default_rng(2)
    weights = {"encoder.weight": rng.normal(size=(D_SAE, D_MLP)).astype(np.float32),
               "encoder.bias": rng.normal(size=D_SAE).astype(np.float32),
               "W_dec": rng.normal(size=(D_SAE, D_MLP)).astype(np.float32),
               "b_dec": rng.normal(size=D_MLP).astype(np.float32)}
    save_numpy(weights, str(cache.parent / "sae.safetensors"))
    cfg = {"k": 4, "num_latents": D_SAE, "d_in": D_MLP, "activation": "topk"}
    put_files(cache, "EleutherAI/sae-tiny", {"layers.1/cfg.json": json.dumps(cfg).encode(),
                                            "layers.1/sae.safetensors": cache.parent / "sae.safetensors"})
    call_command("import_sae", "--repo", "EleutherAI/sae-tiny", "--path", "layers.1", "--model", "tiny",
                 "--hook", "blocks.1.mlp.hook_post", stdout=io.StringIO())
    row = Sae.objects.select_related("source").get(source__model=tiny)
    assert (row.source.name, row.architecture, row.d_in, row.cfg["repo_id"]) == ("sae-tiny.layers.1", "topk", D_MLP,
                                                                                 "EleutherAI/sae-tiny")
    assert torch.equal(sae_load(row).W_enc, torch.from_numpy(weights["encoder.weight"]).T)


def test_a_hub_folder_missing_offline_lists_the_layouts_looked_for(tiny: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CommandError, match=r"layers.1/cfg.json \+ layers.1/sae.safetensors \(sparsify\).*"
                                           r"hf download EleutherAI/sae-x --include 'layers.1/\*'"):
        call_command("import_sae", "--repo", "EleutherAI/sae-x", "--path", "layers.1", "--model", "tiny",
                     "--hook", "blocks.1.mlp.hook_post", stdout=io.StringIO())


def test_circuit_tracer_transcoders_are_registered_as_their_own_source_kind(tiny: Model, cache: Path,
                                                                          tmp_path: Path) -> None:
    params = _gemma_params()
    layer_file = {"W_enc": np.ascontiguousarray(params["W_enc"].T), "W_dec": params["W_dec"], "b_enc": params["b_enc"],
                  "b_dec": params["b_dec"], "W_skip": np.eye(D_MODEL, dtype=np.float32),
                  "k": np.array(4, dtype=np.int64)}
    save_numpy(layer_file, str(tmp_path / "layer_1.safetensors"))
    before = _counts()
    with pytest.raises(CommandError, match="not imported yet.*circuit-tracer layer_N.safetensors"):
        call_command("import_sae", "--release", "gemma-scope-2b-pt-transcoders", "--id",
                     "layer_0/width_16k/average_l0_76", "--model", "tiny", stdout=io.StringIO())
    with pytest.raises(CommandError, match="its hook must be blocks.L.mlp.hook_in"):
        call_command("import_sae", str(tmp_path / "layer_1.safetensors"), "--model", "tiny",
                     "--hook", "blocks.1.hook_resid_post", stdout=io.StringIO())
    save_numpy({**layer_file, "W_dec": np.zeros((D_SAE, D_MODEL + 1), np.float32),
                "b_dec": np.zeros(D_MODEL + 1, np.float32), "W_skip": np.zeros((D_MODEL + 1, D_MODEL), np.float32)},
               str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(CommandError, match="predicts d_out=33 values but tiny's MLP writes 32"):
        call_command("import_sae", str(tmp_path / "layer_0.safetensors"), "--model", "tiny", stdout=io.StringIO())
    assert _counts() == before
    put_files(cache, "mntss/transcoder-x", {"layer_1.safetensors": tmp_path / "layer_1.safetensors"})
    call_command("import_sae", "--repo", "mntss/transcoder-x", "--path", "layer_1.safetensors", "--model", "tiny",
                 stdout=io.StringIO())
    row = Sae.objects.select_related("source").get(source__model=tiny)
    assert (row.source.name, row.source.kind, row.source.hook_point, row.architecture, row.d_in, row.d_sae) == (
        "transcoder-x.layer_1", "transcoder", "blocks.1.mlp.hook_in", "topk", D_MODEL, D_SAE)
    assert (row.cfg["architecture"], row.cfg["repo_id"], row.source.units.count()) == (
        "skip_transcoder", "mntss/transcoder-x", D_SAE)
    loaded = sae_load(row)
    assert loaded.cfg.transcoder and loaded.cfg.skip and loaded.cfg.k == 4
    assert torch.equal(loaded.W_enc, torch.from_numpy(params["W_enc"]))
    assert torch.equal(loaded.W_skip, torch.eye(D_MODEL))


def test_sae_registry_refresh_writes_a_table_the_lookups_read(tmp_path: Path) -> None:
    yaml_path = tmp_path / "pretrained_saes.yaml"
    yaml_path.write_text("r:\n  repo_id: org/saes\n  model: m\n  conversion_func: null\n  saes:\n"
                         "  - id: blocks.0.hook_resid_post\n    path: f0\n")
    out = io.StringIO()
    call_command("sae_registry", "--refresh", str(yaml_path), "--out", str(tmp_path / "t.json"), stdout=out)
    assert "Wrote 1 releases (1 SAEs)" in out.getvalue()
    assert registry.lookup("r", "blocks.0.hook_resid_post", tmp_path / "t.json").files() == [
        "f0/cfg.json", "f0/sae_weights.safetensors"]
    listing = io.StringIO()
    call_command("sae_registry", GEMMA_RELEASE, stdout=listing)
    assert f"{GEMMA_ID}  ({GEMMA_REPO}/{GEMMA_ID})" in listing.getvalue()


def test_a_hub_id_model_loads_from_its_cached_snapshot(tiny: Model, cache: Path, tmp_path: Path) -> None:
    """Workers load a hub-id model from the snapshot in the cache, not through a hub lookup first."""
    from workers.compute import loading

    resolved = loading.resolve("org/tiny")
    assert Path(resolved.path).is_relative_to(cache) and (Path(resolved.path) / "config.json").is_file()
    model = loading.load_torch_model("org/tiny", tmp_path / "converted", False, "cpu", "float32")
    assert model.config.hidden_size == D_MODEL
