"""SAE files: read SAELens, EleutherAI sparsify, Gemma Scope and circuit-tracer layouts, write SAELens.

SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], b_enc, W_dec
[d_sae, d_in], b_dec, and threshold for JumpReLU). sparsify: ``cfg.json`` (k, num_latents, d_in)
+ ``sae.safetensors`` (encoder.weight [d_sae, d_in], encoder.bias, W_dec, b_dec). Gemma Scope:
``params.npz`` (Gemma 2) or ``params.safetensors`` (Gemma Scope 2, lower-case ``w_enc``/``w_dec``)
with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold and no cfg: a JumpReLU that
encodes ``pre = x @ W_enc + b_enc``, ``f = (pre > threshold) * relu(pre)``, without subtracting
b_dec from the input. circuit-tracer transcoders: one ``layer_N.safetensors`` per layer (W_enc
[d_sae, d_in], W_dec, b_enc, b_dec, ``activation_function.threshold`` for JumpReLU). Everything is
checked (keys, shapes, finite values) before an SAE is returned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMA_SCOPE_NPZ = "params.npz"
GEMMA_SCOPE_2 = "params.safetensors"
# Layouts whose dictionaries are transcoders (they read one place and write another).
TRANSCODER_FORMATS = ("circuit_tracer",)


class SaeFileError(ValueError):
    """An SAE directory or file that cannot be used; the message says what is wrong."""


def detect_format(path: Path) -> str:
    """saelens, sparsify, gemma_scope, gemma_scope_2 or circuit_tracer (a transcoder layer file)."""
    if path.is_file() and path.name == GEMMA_SCOPE_NPZ:
        return "gemma_scope"
    if path.is_file() and path.suffix == ".safetensors":
        return "circuit_tracer"
    if not path.is_dir():
        raise SaeFileError(f"{path} is not a directory (expected cfg.json and {SAELENS_WEIGHTS} or "
                           f"{SPARSIFY_WEIGHTS}, or Gemma Scope's {GEMMA_SCOPE_NPZ})")
    if (path / GEMMA_SCOPE_NPZ).is_file():
        return "gemma_scope"
    if (path / GEMMA_SCOPE_2).is_file():
        return "gemma_scope_2"
    if not (path / "cfg.json").is_file():
        raise SaeFileError(f"{path} holds no cfg.json (nor Gemma Scope's {GEMMA_SCOPE_NPZ} or {GEMMA_SCOPE_2})")
    if (path / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (path / SPARSIFY_WEIGHTS).is_file():
        return "sparsify"
    raise SaeFileError(f"{path} holds neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} (sparsify)")


def read_dir(path: Path, hook_name: str = "") -> SparseAutoencoder:
    """Read an SAE directory or file of any known layout (``hook_name`` overrides or supplies the hook)."""
    return read_any(path, hook_name)[0]


def read_any(path: Path, hook_name: str = "") -> tuple[SparseAutoencoder, str]:
    """(the SAE, its layout name); transcoders come back in the SAE's shape, their layout says what they are."""
    fmt = detect_format(path)
    if fmt in {"gemma_scope", "gemma_scope_2"}:
        file = path if path.is_file() else path / (GEMMA_SCOPE_NPZ if fmt == "gemma_scope" else GEMMA_SCOPE_2)
        tensors = _read_npz(file) if fmt == "gemma_scope" else _read_tensors(file)
        return build(*_from_gemma_scope(tensors, hook_name)), fmt
    if fmt == "circuit_tracer":
        return build(*_from_circuit_tracer(_read_tensors(path), hook_name)), fmt
    cfg = _read_json(path / "cfg.json")
    if fmt == "saelens":
        return build(saelens_config(cfg, hook_name), _read_tensors(path / SAELENS_WEIGHTS)), fmt
    return build(*_from_sparsify(cfg, _read_tensors(path / SPARSIFY_WEIGHTS), hook_name)), fmt


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SaeFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SaeFileError(f"{path} must hold a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (OSError, SafetensorError, ValueError) as exc:
        raise SaeFileError(f"{path} is not a readable safetensors file ({exc})") from None


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except (OSError, ValueError) as exc:
        raise SaeFileError(f"{path} is not a readable .npz file ({exc})") from None


def _from_gemma_scope(tensors: dict[str, torch.Tensor], hook_name: str) -> tuple[SaeConfig, dict[str, torch.Tensor]]:
    """Gemma Scope's JumpReLU (b_dec is not subtracted from the input); Gemma Scope 2 writes w_enc, w_dec."""
    named = {("W_" + key[2:]) if key.startswith("w_") else key: value for key, value in tensors.items()}
    if "affine_skip_connection" in named:
        raise SaeFileError("unsupported Gemma Scope file: it is a transcoder with an affine skip connection")
    scaling = named.pop("scaling_factor", None)
    if scaling is not None and not bool(torch.all(scaling == 1)):
        raise SaeFileError("unsupported Gemma Scope file: it has a scaling_factor other than 1")
    missing = [key for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if key not in named]
    if missing:
        raise SaeFileError(f"Gemma Scope weights are missing {', '.join(missing)}")
    if named["W_enc"].ndim != 2:
        raise SaeFileError(f"W_enc must be a matrix [d_in, d_sae] (got shape {list(named['W_enc'].shape)})")
    d_in, d_sae = (int(n) for n in named["W_enc"].shape)
    config = _config(architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False,
                     hook_name=hook_name)
    return config, {key: named[key] for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}


def _from_circuit_tracer(tensors: dict[str, torch.Tensor], hook_name: str) -> tuple[SaeConfig, dict[str, torch.Tensor]]:
    """A circuit-tracer transcoder layer: W_enc is stored [d_sae, d_in]; JumpReLU when it has a threshold."""
    if "W_skip" in tensors:
        raise SaeFileError("unsupported transcoder: it has a skip connection (W_skip)")
    missing = [key for key in ("W_enc", "W_dec", "b_enc", "b_dec") if key not in tensors]
    if missing:
        raise SaeFileError(f"transcoder weights are missing {', '.join(missing)}")
    if tensors["W_enc"].ndim != 2:
        raise SaeFileError(f"W_enc must be a matrix [d_sae, d_in] (got shape {list(tensors['W_enc'].shape)})")
    d_sae, d_in = (int(n) for n in tensors["W_enc"].shape)
    converted = {"W_enc": tensors["W_enc"].T, "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"],
                 "b_dec": tensors["b_dec"]}
    threshold = tensors.get("activation_function.threshold")
    if threshold is not None:
        converted["threshold"] = threshold
    config = _config(architecture="jumprelu" if threshold is not None else "relu", d_in=d_in, d_sae=d_sae,
                     apply_b_dec_to_input=False, hook_name=hook_name)
    return config, converted


def _config(**fields: Any) -> SaeConfig:
    try:
        return SaeConfig(**fields)
    except ValueError as exc:
        raise SaeFileError(str(exc)) from None


def _int(cfg: dict[str, Any], key: str, where: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SaeFileError(f"{where} cfg.json needs an integer {key!r} (got {value!r})")
    return value


def saelens_config(cfg: dict[str, Any], hook_name: str = "") -> SaeConfig:
    """SAELens cfg.json (v6: architecture topk with k; v5: architecture standard + activation_fn_str;
    before v5 the hook was ``hook_point``)."""
    metadata: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    arch = str(cfg.get("architecture", "standard"))
    activation = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "standard":
        arch = "topk" if activation == "topk" else "relu"
        if activation not in {"relu", "topk"}:
            raise SaeFileError(f"unsupported SAELens activation function {activation!r} (supported: relu, topk)")
    if arch not in {"topk", "relu", "jumprelu"}:
        raise SaeFileError(f"unsupported SAE architecture {arch!r} (supported: standard/relu, topk, jumprelu)")
    try:
        return SaeConfig(
            architecture=arch, d_in=_int(cfg, "d_in", "SAELens"), d_sae=_int(cfg, "d_sae", "SAELens"),
            k=int(k) if arch == "topk" and k is not None else None,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            normalize_activations=str(cfg.get("normalize_activations") or "none"),
            hook_name=hook_name or str(cfg.get("hook_name") or cfg.get("hook_point") or metadata.get("hook_name") or ""),
            model_name=str(cfg.get("model_name") or metadata.get("model_name") or ""),
        )
    except ValueError as exc:
        raise SaeFileError(str(exc)) from None


def _from_sparsify(cfg: dict[str, Any], tensors: dict[str, torch.Tensor],
                   hook_name: str) -> tuple[SaeConfig, dict[str, torch.Tensor]]:
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag):
            raise SaeFileError(f"unsupported sparsify SAE: {flag} is set (only plain TopK SAEs are supported)")
    if cfg.get("activation", "topk") != "topk":
        raise SaeFileError(f"unsupported sparsify activation {cfg.get('activation')!r} (supported: topk)")
    missing = [key for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if key not in tensors]
    if missing:
        raise SaeFileError(f"sparsify weights are missing {', '.join(missing)}")
    d_in = _int(cfg, "d_in", "sparsify")
    d_sae = int(cfg.get("num_latents") or 0) or d_in * _int(cfg, "expansion_factor", "sparsify")
    try:
        config = SaeConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=_int(cfg, "k", "sparsify"),
                           apply_b_dec_to_input=True, hook_name=hook_name)
    except ValueError as exc:
        raise SaeFileError(str(exc)) from None
    converted = {"W_enc": tensors["encoder.weight"].T, "b_enc": tensors["encoder.bias"],
                 "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    return config, converted


def build(config: SaeConfig, tensors: dict[str, torch.Tensor]) -> SparseAutoencoder:
    """Check keys, shapes and values, then build the SAE."""
    expected = tensor_shapes(config)
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise SaeFileError(f"SAE weights are missing {', '.join(missing)} (expected {', '.join(expected)})")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SaeFileError(f"{name} has shape {list(got)}, expected {list(shape)} "
                               f"for d_in={config.d_in}, d_sae={config.d_sae}")
        if not tensors[name].is_floating_point():
            raise SaeFileError(f"{name} must hold floating-point values (got {tensors[name].dtype})")
        if not bool(torch.isfinite(tensors[name]).all()):
            raise SaeFileError(f"{name} holds NaN or infinite values")
    return SparseAutoencoder(config, tensors)


def saelens_cfg(config: SaeConfig) -> dict[str, Any]:
    """cfg.json in the SAELens layout (hook and model both at the top and in metadata, so v5
    and v6 readers find them)."""
    cfg: dict[str, Any] = {
        "architecture": config.architecture if config.architecture != "relu" else "standard",
        "d_in": config.d_in, "d_sae": config.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": config.normalize_activations, "reshape_activations": "none",
        "activation_fn_str": "topk" if config.architecture == "topk" else "relu",
        "hook_name": config.hook_name, "model_name": config.model_name,
        "metadata": {"hook_name": config.hook_name, "model_name": config.model_name},
    }
    if config.k is not None:
        cfg["k"] = config.k
        cfg["activation_fn_kwargs"] = {"k": config.k}
    return cfg


def to_bytes(sae: SparseAutoencoder) -> bytes:
    return st_save(sae.tensors())


def from_bytes(config: SaeConfig, data: bytes) -> SparseAutoencoder:
    return build(config, st_load(data))


def write_dir(sae: SparseAutoencoder, path: Path) -> None:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(saelens_cfg(sae.cfg), indent=2))
    (path / SAELENS_WEIGHTS).write_bytes(to_bytes(sae))
