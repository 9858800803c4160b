"""SAELens's release table kept in the product, Gemma Scope and circuit-tracer files, and hub
files found in a local folder laid out like the hub cache (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy

from fixtures.hub_cache import put_files
from workers.compute import hub
from workers.compute.sae import files, registry

D_IN, D_SAE = 12, 40


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


# ---- the release table -------------------------------------------------------------------------
def test_the_table_resolves_gemma_scope_by_release_and_id() -> None:
    entry = registry.lookup("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    assert (entry.repo_id, entry.model, entry.conversion_func) == ("google/gemma-scope-2b-pt-res", "gemma-2-2b", "gemma_2")
    assert entry.files() == ["layer_12/width_16k/average_l0_82/params.npz"]
    assert entry.hook_name() == "blocks.12.hook_resid_post" and entry.supported and not entry.is_transcoder


def test_canonical_ids_point_at_their_folder_and_neuronpedia_id() -> None:
    entry = registry.lookup("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical")
    assert entry.path == "layer_0/width_16k/average_l0_105"
    assert entry.neuronpedia == "gemma-2-2b/0-gemmascope-res-16k"


def test_saelens_layout_releases_fetch_cfg_and_weights() -> None:
    entry = registry.lookup("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    assert entry.repo_id == "jbloom/GPT2-Small-SAEs-Reformatted" and entry.conversion_func is None
    assert entry.files() == ["blocks.8.hook_resid_pre/cfg.json", "blocks.8.hook_resid_pre/sae_weights.safetensors"]
    assert entry.neuronpedia == "gpt2-small/8-res-jb" and entry.hook_name() == "blocks.8.hook_resid_pre"


def test_the_table_holds_the_main_families() -> None:
    names = set(registry.releases())
    assert {"gemma-scope-2b-pt-res", "gemma-scope-9b-pt-res", "gpt2-small-res-jb", "pythia-70m-deduped-res-sm",
            "llama_scope_lxr_8x", "gemma-scope-2b-pt-transcoders"} <= names
    assert len(registry.sae_ids("gemma-scope-2b-pt-res")) == 316
    assert registry.lookup("gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76").is_transcoder
    assert not registry.lookup("llama_scope_lxr_8x", "l0r_8x").supported  # its layout is not read yet


def test_unknown_releases_and_ids_name_close_matches() -> None:
    with pytest.raises(registry.RegistryError, match="unknown SAE release 'gemma-scope-2b-pt-re'.*gemma-scope-2b-pt-res"):
        registry.lookup("gemma-scope-2b-pt-re", "x")
    with pytest.raises(registry.RegistryError, match="has no SAE id 'layer_12/width_16k/average_l0_81'.*average_l0_82"):
        registry.lookup("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_81")


YAML = """\
my-release:
  repo_id: org/saes
  model: gpt2-small
  conversion_func: null
  config_overrides:
    hook_name: blocks.3.hook_resid_post
  saes:
  - id: a
    path: folder/a
    neuronpedia: gpt2-small/3-x
    l0: 12
  - id: b
    path: folder/b
gemma-like:
  repo_id: google/gemma-scope-2b-pt-mlp
  model: gemma-2-2b
  conversion_func: gemma_2
  saes:
  - id: layer_4/width_16k/average_l0_9
    path: layer_4/width_16k/average_l0_9
"""


def test_a_refreshed_table_round_trips_through_its_json_file(tmp_path: Path) -> None:
    path = tmp_path / "releases.json"
    path.write_text(registry.dump_table(registry.table_from_yaml(YAML), "a test yaml"))
    assert json.loads(path.read_text())["source"] == "a test yaml"
    entry = registry.lookup("my-release", "a", path)
    assert (entry.repo_id, entry.path, entry.neuronpedia) == ("org/saes", "folder/a", "gpt2-small/3-x")
    assert entry.hook_name() == "blocks.3.hook_resid_post"
    assert registry.lookup("my-release", "b", path).neuronpedia is None
    assert registry.lookup("gemma-like", "layer_4/width_16k/average_l0_9", path).hook_name() == "blocks.4.hook_mlp_out"


def test_a_file_that_is_not_the_release_table_is_refused() -> None:
    with pytest.raises(registry.RegistryError, match="lacks repo_id"):
        registry.table_from_yaml("rel:\n  model: x\n")
    with pytest.raises(registry.RegistryError, match="expected a mapping"):
        registry.table_from_yaml("- a\n- b\n")


# ---- Gemma Scope and circuit-tracer files --------------------------------------------------------
def gemma_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
            "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
            "b_enc": rng.normal(size=D_SAE).astype(np.float32),
            "b_dec": rng.normal(size=D_IN).astype(np.float32) * 3,  # large: subtracting it would show
            "threshold": rng.uniform(0.2, 1.5, size=D_SAE).astype(np.float32)}


def jumprelu_reference(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Gemma Scope's published encoder: pre = x @ W_enc + b_enc; (pre > threshold) * relu(pre)."""
    pre = x @ p["W_enc"] + p["b_enc"]
    return (pre > p["threshold"]) * np.maximum(pre, 0)


def test_gemma_scope_params_npz_encodes_as_the_published_jumprelu(tmp_path: Path) -> None:
    params = gemma_params()
    np.savez(tmp_path / "params.npz", **params)
    sae, fmt = files.read_any(tmp_path, "blocks.1.hook_resid_post")
    assert fmt == "gemma_scope" and sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_name) == (D_IN, D_SAE, "blocks.1.hook_resid_post")
    x = np.random.default_rng(1).normal(size=(64, D_IN)).astype(np.float32) * 2
    want = jumprelu_reference(x, params)
    assert 0 < (want > 0).mean() < 0.9  # the threshold cuts some latents and keeps others
    got = sae.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(torch.from_numpy(want)).detach().numpy(),
                               want @ params["W_dec"] + params["b_dec"], rtol=1e-5, atol=1e-4)


def test_gemma_scope_2_params_safetensors_with_lower_case_keys(tmp_path: Path) -> None:
    params = gemma_params(seed=2)
    save_numpy({("w_" + k[2:] if k.startswith("W_") else k): v for k, v in params.items()},
               str(tmp_path / "params.safetensors"))
    sae, fmt = files.read_any(tmp_path, "blocks.0.hook_resid_post")
    x = np.random.default_rng(3).normal(size=(16, D_IN)).astype(np.float32)
    assert fmt == "gemma_scope_2"
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).detach().numpy(), jumprelu_reference(x, params),
                               rtol=1e-5, atol=1e-5)


def test_gemma_scope_files_missing_a_tensor_are_refused(tmp_path: Path) -> None:
    params = gemma_params()
    del params["threshold"]
    np.savez(tmp_path / "params.npz", **params)
    with pytest.raises(files.SaeFileError, match="missing threshold"):
        files.read_any(tmp_path / "params.npz")


def test_circuit_tracer_transcoder_layers_are_read_with_their_encoder_transposed(tmp_path: Path) -> None:
    params = gemma_params(seed=4)
    save_numpy({"W_enc": np.ascontiguousarray(params["W_enc"].T), "W_dec": params["W_dec"], "b_enc": params["b_enc"],
                "b_dec": params["b_dec"], "activation_function.threshold": params["threshold"]},
               str(tmp_path / "layer_1.safetensors"))
    sae, fmt = files.read_any(tmp_path / "layer_1.safetensors", "blocks.1.mlp.hook_in")
    x = np.random.default_rng(5).normal(size=(16, D_IN)).astype(np.float32)
    assert fmt in files.TRANSCODER_FORMATS
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).detach().numpy(), jumprelu_reference(x, params),
                               rtol=1e-5, atol=1e-5)


# ---- the hub cache -----------------------------------------------------------------------------
def test_hub_files_come_from_the_cache_folder_named_by_hf_hub_cache(cache: Path) -> None:
    snapshot = put_files(cache, "org/saes", {"f/params.npz": b"x", "f/other.txt": b"y"})
    assert hub.fetch_files("org/saes", ["f/params.npz"], "SAE f") == [snapshot / "f" / "params.npz"]


def test_hf_home_is_honoured_when_hf_hub_cache_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"


def test_missing_hub_files_offline_name_the_repo_files_and_the_command(cache: Path) -> None:
    put_files(cache, "org/saes", {"f/cfg.json": b"{}"})
    with pytest.raises(hub.HubFilesMissing) as caught:
        hub.fetch_files("org/saes", ["f/cfg.json", "f/sae_weights.safetensors"], "SAE 'f' of release 'r'")
    message = str(caught.value)
    assert "SAE 'f' of release 'r'" in message and "HF_HUB_OFFLINE is set" in message
    assert "f/sae_weights.safetensors of hub repo org/saes" in message
    assert "hf download org/saes 'f/sae_weights.safetensors'" in message and "f/cfg.json," not in message


def test_a_model_snapshot_must_hold_config_tokenizer_and_every_weight_shard(cache: Path) -> None:
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    snapshot = put_files(cache, "org/big", {"config.json": b"{}", "tokenizer.json": b"{}",
                                            "model.safetensors.index.json": json.dumps(index).encode(),
                                            "model-00001-of-00002.safetensors": b"x"})
    with pytest.raises(hub.HubFilesMissing, match="model-00002-of-00002.safetensors of hub repo org/big"):
        hub.model_snapshot("org/big")
    (snapshot / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert hub.model_snapshot("org/big") == snapshot


def test_a_model_absent_from_the_cache_offline_says_what_to_download(cache: Path) -> None:
    with pytest.raises(hub.HubFilesMissing, match=r"model google/gemma-2-2b: config.json.*`hf download google/gemma-2-2b"):
        hub.model_snapshot("google/gemma-2-2b")


def test_gemma_scope_2_releases_name_their_site_in_the_folder() -> None:
    entry = registry.lookup("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
    assert entry.files() == ["resid_post/layer_12_width_16k_l0_medium/params.safetensors"]
    assert entry.hook_name() == "blocks.12.hook_resid_post" and entry.neuronpedia == "gemma-3-270m/12-gemmascope-2-res-16k"


def test_the_table_refreshes_from_a_yaml_file_or_inside_an_sae_lens_wheel(tmp_path: Path) -> None:
    import zipfile

    (tmp_path / "pretrained_saes.yaml").write_text(YAML)
    with zipfile.ZipFile(tmp_path / "sae_lens-9.9.9-py3-none-any.whl", "w") as wheel:
        wheel.writestr(registry.WHEEL_MEMBER, YAML)
    assert registry.read_yaml_source(str(tmp_path / "pretrained_saes.yaml")) == YAML
    assert registry.read_yaml_source(str(tmp_path / "sae_lens-9.9.9-py3-none-any.whl")) == YAML
    with pytest.raises(registry.RegistryError, match="cannot read"):
        registry.read_yaml_source(str(tmp_path / "absent.yaml"))


def test_old_saelens_cfgs_name_their_hook_as_hook_point() -> None:
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.8.hook_resid_pre", "model_name": "gpt2-small"}
    config = files.saelens_config(cfg)
    assert (config.hook_name, config.architecture, config.apply_b_dec_to_input) == ("blocks.8.hook_resid_pre", "relu", True)
