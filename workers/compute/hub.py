"""Hugging Face hub files, offline first: the local hub cache, then a download when online.

The cache is the one huggingface_hub uses (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else
~/.cache/huggingface/hub; laid out as ``models--ORG--NAME/snapshots/REV/PATH`` with
``refs/main``). Both variables and ``HF_HUB_OFFLINE`` are read at each call, not at import, so a
process can point them elsewhere. Files found in the cache never touch the network. No Django here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# What a transformers model needs from its repo: configs, tokenizer and safetensors weights
# (pickled .bin, TF, Flax and ONNX copies are skipped).
MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "tokenizer.tiktoken")


class HubFilesMissing(LookupError):
    """Files that are neither in the local hub cache nor downloadable now; says what to fetch."""


def is_hub_id(location: str) -> bool:
    return bool(HUB_ID.match(location)) and not Path(location).expanduser().exists()


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return home / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cached_file(repo_id: str, filename: str) -> Path | None:
    """The file's path in the local cache (main revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def fetch_files(repo_id: str, filenames: list[str], what: str) -> list[Path]:
    """Local paths of the repo's files: from the cache, else downloaded (when online)."""
    paths = {name: cached_file(repo_id, name) for name in filenames}
    reason = "HF_HUB_OFFLINE is set" if offline() else ""
    if not offline():
        reason = _download_missing(repo_id, paths)
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise HubFilesMissing(missing_message(what, repo_id, missing, reason))
    return [paths[name] for name in filenames]  # type: ignore[misc]  # none is None past the check


def _download_missing(repo_id: str, paths: dict[str, Path | None]) -> str:
    from huggingface_hub import hf_hub_download

    for name in [name for name, path in paths.items() if path is None]:
        try:
            paths[name] = Path(hf_hub_download(repo_id, name, cache_dir=cache_dir()))
        except Exception as exc:  # noqa: BLE001  # any failure (network, gated, missing) ends in one message
            return f"the download failed: {type(exc).__name__}: {_first_line(exc)}"
    return ""


def fetch_folder(repo_id: str, folder: str, layouts: dict[str, tuple[str, ...]], what: str) -> Path:
    """The local copy of a repo folder holding one of ``layouts`` (name -> its files): from the
    cache, else the folder downloaded (when online)."""
    folder = folder.strip("/")
    found = _cached_layout(repo_id, folder, layouts)
    reason = "HF_HUB_OFFLINE is set" if offline() else ""
    if found is None and not offline():
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(repo_id, cache_dir=cache_dir(), allow_patterns=[f"{folder}/*" if folder else "*"])
        except Exception as exc:  # noqa: BLE001  # any failure (network, gated, missing) ends in one message
            reason = f"the download failed: {type(exc).__name__}: {_first_line(exc)}"
        found = _cached_layout(repo_id, folder, layouts)
    if found is None:
        options = "; or ".join(f"{' + '.join(_join(folder, f) for f in files)} ({name})"
                               for name, files in layouts.items())
        include = f" --include '{folder}/*'" if folder else ""
        raise HubFilesMissing(missing_message(what, repo_id, [options], reason, f"hf download {repo_id}{include}"))
    return found


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _cached_layout(repo_id: str, folder: str, layouts: dict[str, tuple[str, ...]]) -> Path | None:
    for files in layouts.values():
        paths = [cached_file(repo_id, _join(folder, name)) for name in files]
        if all(path is not None for path in paths):
            return paths[0].parent  # type: ignore[union-attr]  # all checked above
    return None


def model_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of a transformers model repo, complete (config, tokenizer,
    weights): from the cache, else downloaded (when online)."""
    folder, missing = _cached_snapshot(repo_id)
    reason = "HF_HUB_OFFLINE is set" if offline() else ""
    if missing and not offline():
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(repo_id, cache_dir=cache_dir(), allow_patterns=MODEL_PATTERNS)
        except Exception as exc:  # noqa: BLE001  # any failure (network, gated, missing) ends in one message
            reason = f"the download failed: {type(exc).__name__}: {_first_line(exc)}"
        folder, missing = _cached_snapshot(repo_id)
    if missing or folder is None:
        raise HubFilesMissing(missing_message(f"model {repo_id}", repo_id, missing, reason))
    return folder


def _cached_snapshot(repo_id: str) -> tuple[Path | None, list[str]]:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir(), local_files_only=True))
    except Exception:  # noqa: BLE001  # not cached (LocalEntryNotFoundError and kin)
        return None, ["config.json", "tokenizer files", "model.safetensors (or its shards)"]
    return folder, missing_model_files(folder)


def missing_model_files(folder: Path) -> list[str]:
    """What a transformers model folder lacks: config, tokenizer or weights (with every shard)."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer.json (or tokenizer.model)")
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / single).is_file():
            return missing
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text()).get("weight_map", {}).values()))
            return missing + [shard for shard in shards if not (folder / shard).is_file()]
    return [*missing, "model.safetensors"]


def missing_message(what: str, repo_id: str, missing: list[str], reason: str, command: str = "") -> str:
    """Which files are missing, why, and the command that fetches them by hand."""
    where = f"the local Hugging Face cache ({cache_dir()})"
    why = f" and {reason}" if reason else " and the hub could not be reached"
    files = " ".join(f"'{name}'" for name in missing if " " not in name)
    command = command or f"hf download {repo_id} {files}".rstrip()
    return (f"{what}: {', '.join(missing)} of hub repo {repo_id} not found in {where}{why}. On a machine "
            f"with network run `{command}` (gated repos such as Gemma need `hf auth login` first), copy "
            f"its models--{repo_id.replace('/', '--')} folder into {cache_dir()} (or point HF_HUB_CACHE at "
            f"its cache), and run this again.")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
