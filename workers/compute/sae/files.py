"""SAE files: read SAELens, EleutherAI sparsify, Gemma Scope and circuit-tracer layouts, write SAELens.

SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], b_enc, W_dec
[d_sae, d_in], b_dec, and threshold for JumpReLU). sparsify: ``cfg.json`` (k, num_latents, d_in)
+ ``sae.safetensors`` (encoder.weight [d_sae, d_in], encoder.bias, W_dec, b_dec). Gemma Scope:
``params.npz`` (Gemma 2) or ``params.safetensors`` (Gemma Scope 2, lower-case ``w_enc``/``w_dec``)
with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold and no cfg: a JumpReLU that
encodes ``pre = x @ W_enc + b_enc``, ``f = (pre > threshold) * relu(pre)``, without subtracting
b_dec from the input. circuit-tracer transcoders: one ``layer_N.safetensors`` per layer (W_enc
[d_sae, d_in], W_dec [d_sae, d_out], b_enc, b_dec [d_out], ``activation_function.threshold`` for
JumpReLU, a scalar ``k`` for TopK, ``W_skip`` [d_out, d_in] for a skip connection); read and written.
SAELens transcoders: ``cfg.json`` with architecture ``transcoder``, ``skip_transcoder`` or
``jumprelu_transcoder`` (d_out, hook_name_out) + ``sae_weights.safetensors`` (W_dec [d_sae, d_out],
W_skip [d_out, d_in]); SAELens's own transcoders are ReLU, a TopK one is marked by
``activation_fn_str`` topk and ``k``. Everything is checked (keys, shapes, finite values) before an
SAE or transcoder is returned.
"""

from __future__ import annotations

import json
import re
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
        return build(*_from_circuit_tracer(_read_tensors(path), hook_name, path.name)), fmt
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


LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")
# circuit-tracer's names for where its per-layer transcoders read and write (config.yaml).
CIRCUIT_TRACER_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}


def _from_circuit_tracer(tensors: dict[str, torch.Tensor], hook_name: str,
                         file_name: str = "") -> tuple[SaeConfig, dict[str, torch.Tensor]]:
    """A circuit-tracer transcoder layer: W_enc is stored [d_sae, d_in]; JumpReLU when it has a
    threshold, TopK when it has a scalar ``k``, ReLU otherwise; the hook defaults to the file's layer."""
    missing = [key for key in ("W_enc", "W_dec", "b_enc", "b_dec") if key not in tensors]
    if missing:
        raise SaeFileError(f"transcoder weights are missing {', '.join(missing)}")
    if tensors["W_enc"].ndim != 2 or tensors["W_dec"].ndim != 2:
        raise SaeFileError(f"W_enc and W_dec must be matrices [d_sae, d_in] and [d_sae, d_out] (got shapes "
                           f"{list(tensors['W_enc'].shape)} and {list(tensors['W_dec'].shape)})")
    d_sae, d_in = (int(n) for n in tensors["W_enc"].shape)
    converted = {"W_enc": tensors["W_enc"].T, "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"],
                 "b_dec": tensors["b_dec"]}
    threshold = tensors.get("activation_function.threshold")
    k = tensors.get("k")
    if threshold is not None and k is not None:
        raise SaeFileError("a transcoder file holds both a JumpReLU threshold and a TopK k")
    if k is not None and k.numel() != 1:
        raise SaeFileError(f"k must be one number (got shape {list(k.shape)})")
    if threshold is not None:
        converted["threshold"] = threshold
    if "W_skip" in tensors:
        converted["W_skip"] = tensors["W_skip"]
    match = LAYER_FILE.match(file_name)
    if not hook_name and match:
        hook_name = f"blocks.{match.group(1)}.mlp.hook_in"
    architecture = "jumprelu" if threshold is not None else "topk" if k is not None else "relu"
    config = _config(architecture=architecture, d_in=d_in, d_sae=d_sae, k=int(k.item()) if k is not None else None,
                     apply_b_dec_to_input=False, hook_name=hook_name, transcoder=True,
                     d_out=int(tensors["W_dec"].shape[1]), skip="W_skip" in tensors,
                     hook_name_out=_hook_out(hook_name))
    return config, converted


def _hook_out(hook_name: str) -> str:
    """TransformerLens's name of the MLP output a transcoder on ``blocks.L.mlp.hook_in`` predicts."""
    match = re.match(r"^blocks\.(\d+)\.", hook_name)
    return f"blocks.{match.group(1)}.hook_mlp_out" if match else ""


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
    if arch in TRANSCODER_ARCHITECTURES:
        return _saelens_transcoder(cfg, metadata, hook_name)
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


TRANSCODER_ARCHITECTURES = ("transcoder", "skip_transcoder", "jumprelu_transcoder")


def _saelens_transcoder(cfg: dict[str, Any], metadata: dict[str, Any], hook_name: str) -> SaeConfig:
    """SAELens's transcoder cfg.json: ReLU (``transcoder``, ``skip_transcoder``) or JumpReLU, and TopK
    where ``activation_fn_str`` is topk with a k."""
    arch = str(cfg["architecture"])
    activation = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    inner = "jumprelu" if arch == "jumprelu_transcoder" or activation == "jumprelu" else (
        "topk" if activation == "topk" else "relu")
    if activation not in {"relu", "topk", "jumprelu"}:
        raise SaeFileError(f"unsupported transcoder activation function {activation!r} (supported: relu, topk, jumprelu)")
    hook = hook_name or str(cfg.get("hook_name") or metadata.get("hook_name") or "")
    return _config(architecture=inner, d_in=_int(cfg, "d_in", "SAELens"), d_sae=_int(cfg, "d_sae", "SAELens"),
                   d_out=_int(cfg, "d_out", "SAELens transcoder"), k=int(k) if inner == "topk" and k else None,
                   apply_b_dec_to_input=False, transcoder=True, skip=arch == "skip_transcoder", hook_name=hook,
                   hook_name_out=str(cfg.get("hook_name_out") or _hook_out(hook)),
                   model_name=str(cfg.get("model_name") or metadata.get("model_name") or ""))


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
    if config.transcoder:
        return _saelens_transcoder_cfg(config)
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


def _saelens_transcoder_cfg(config: SaeConfig) -> dict[str, Any]:
    """SAELens's transcoder cfg.json; the activation (topk with k, relu, jumprelu) is written out too."""
    arch = "skip_transcoder" if config.skip else "jumprelu_transcoder" if config.architecture == "jumprelu" else "transcoder"
    layer_out = re.match(r"^blocks\.(\d+)\.", config.hook_name_out)
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": config.d_in, "d_sae": config.d_sae, "d_out": config.out_dim,
        "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "none", "activation_fn_str": config.architecture,
        "hook_name": config.hook_name, "hook_name_out": config.hook_name_out,
        "hook_layer_out": int(layer_out.group(1)) if layer_out else 0, "hook_head_index_out": None,
        "model_name": config.model_name,
        "metadata": {"hook_name": config.hook_name, "model_name": config.model_name},
    }
    if config.k is not None:
        cfg["k"] = config.k
        cfg["activation_fn_kwargs"] = {"k": config.k}
    return cfg


def circuit_tracer_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """A transcoder's tensors under circuit-tracer's per-layer names (W_enc stored [d_sae, d_in])."""
    if not sae.cfg.transcoder:
        raise SaeFileError("only a transcoder can be written as a circuit-tracer layer file")
    tensors = sae.tensors()
    out = {"W_enc": tensors["W_enc"].T.contiguous(), "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"],
           "b_dec": tensors["b_dec"]}
    if "threshold" in tensors:
        out["activation_function.threshold"] = tensors["threshold"]
    if sae.cfg.k is not None:
        out["k"] = torch.tensor(sae.cfg.k)
    if "W_skip" in tensors:
        out["W_skip"] = tensors["W_skip"]
    return out


def write_circuit_tracer(sae: SparseAutoencoder, path: Path) -> Path:
    """Write ``layer_N.safetensors`` (N: the layer of the transcoder's hook) into ``path``."""
    match = re.match(r"^blocks\.(\d+)\.mlp\.hook_in$", sae.cfg.hook_name)
    if match is None:
        raise SaeFileError(f"a circuit-tracer layer file is named by its layer: the transcoder reads "
                           f"{sae.cfg.hook_name or 'no hook'}, not blocks.L.mlp.hook_in")
    path.mkdir(parents=True, exist_ok=True)
    file = path / f"layer_{match.group(1)}.safetensors"
    file.write_bytes(st_save(circuit_tracer_tensors(sae)))
    return file


def to_bytes(sae: SparseAutoencoder) -> bytes:
    return st_save(sae.tensors())


def from_bytes(config: SaeConfig, data: bytes) -> SparseAutoencoder:
    return build(config, st_load(data))


def write_dir(sae: SparseAutoencoder, path: Path) -> None:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(saelens_cfg(sae.cfg), indent=2))
    (path / SAELENS_WEIGHTS).write_bytes(to_bytes(sae))
