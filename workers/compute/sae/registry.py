"""SAELens's release registry, kept in the product: a release and an SAE id to hub files.

``releases.json`` beside this module is a copy of SAELens's ``pretrained_saes.yaml`` (release ->
hub repo, model, conversion format, and each SAE id -> its path in the repo and Neuronpedia id),
refreshed with ``manage.py sae_registry --refresh FILE_OR_URL``. The sae-lens package is not a
dependency: only its table is read. No Django here.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("releases.json")
WHEEL_MEMBER = "sae_lens/pretrained_saes.yaml"

# What each SAELens conversion format stores in the SAE's folder of the repo. None is SAELens's
# own layout. Formats missing here are listed in the table but cannot be imported yet.
FORMAT_FILES: dict[str | None, tuple[str, ...]] = {
    None: ("cfg.json", "sae_weights.safetensors"),
    "gemma_2": ("params.npz",),
    "gemma_2_transcoder": ("params.npz",),
    "gemma_3": ("params.safetensors",),
}
TRANSCODER_FORMATS = {"gemma_2_transcoder", "mwhanna_transcoder", "mntss_clt_layer_transcoder"}
# Gemma Scope names the site in the repo id, Gemma Scope 2 in the folder; the layer is in the folder.
GEMMA_SCOPE_HOOKS = {"-res": "blocks.{layer}.hook_resid_post", "-mlp": "blocks.{layer}.hook_mlp_out",
                     "-att": "blocks.{layer}.attn.hook_z", "-transcoders": "blocks.{layer}.mlp.hook_in"}
GEMMA_SCOPE_2_HOOKS = {"resid_post": "blocks.{layer}.hook_resid_post", "mlp_out": "blocks.{layer}.hook_mlp_out",
                       "attn_out": "blocks.{layer}.attn.hook_z", "transcoder": "blocks.{layer}.mlp.hook_in"}


class RegistryError(LookupError):
    """A release or SAE id the table does not know, or a table that cannot be read."""


@dataclass(frozen=True)
class RegistryEntry:
    """One SAE of the table: where its files are on the hub and how they are laid out."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    """The SAE's folder inside the repo."""
    model: str
    """The model SAELens names for it (a hub id or a TransformerLens name)."""
    conversion_func: str | None
    """SAELens's name for the file layout; None is the SAELens layout."""
    neuronpedia: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def is_transcoder(self) -> bool:
        return self.conversion_func in TRANSCODER_FORMATS or "transcoder" in self.release

    @property
    def supported(self) -> bool:
        # Gemma Scope 2's cross-layer transcoders keep one file per layer group, not params.safetensors.
        return self.conversion_func in FORMAT_FILES and "clt" not in self.path

    def files(self) -> list[str]:
        """The repo files to fetch for this SAE (empty when its format is not supported)."""
        folder = self.path.strip("/")
        return [f"{folder}/{name}" if folder else name for name in FORMAT_FILES.get(self.conversion_func, ())]

    def hook_name(self) -> str:
        """The hook point when the table alone tells it (Gemma Scope, ids that are hook names)."""
        if "hook_name" in self.config_overrides:
            return str(self.config_overrides["hook_name"])
        if self.conversion_func in {"gemma_2", "gemma_2_transcoder", "gemma_3"}:
            layer = re.search(r"layer_(\d+)", self.path)
            sites, named = ((GEMMA_SCOPE_2_HOOKS, self.path.split("/")[0]) if self.conversion_func == "gemma_3"
                            else (GEMMA_SCOPE_HOOKS, self.repo_id))
            site = next((hook for key, hook in sites.items() if key in named), "")
            return site.format(layer=layer.group(1)) if layer and site else ""
        return self.sae_id if re.fullmatch(r"blocks\.\d+\.[A-Za-z_.]+", self.sae_id) else ""


def table_from_yaml(text: str) -> dict[str, Any]:
    """SAELens's pretrained_saes.yaml -> the product's table (only the fields it uses)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"not a readable pretrained_saes.yaml ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise RegistryError("not a pretrained_saes.yaml: expected a mapping of releases")
    releases: dict[str, Any] = {}
    for release, spec in data.items():
        if not isinstance(spec, dict) or not {"repo_id", "model", "saes"} <= set(spec):
            raise RegistryError(f"release {release!r} lacks repo_id, model or saes")
        releases[str(release)] = {
            "repo_id": str(spec["repo_id"]), "model": str(spec["model"]),
            "conversion_func": spec.get("conversion_func"),
            "config_overrides": spec.get("config_overrides") or {},
            "saes": [[str(s["id"]), str(s["path"]), s.get("neuronpedia")] for s in spec["saes"]],
        }
    return releases


def read_yaml_source(location: str) -> str:
    """pretrained_saes.yaml's text from a file, an sae-lens wheel (read inside, not installed) or a URL."""
    if location.startswith(("http://", "https://")):
        from urllib.request import urlopen

        try:
            with urlopen(location, timeout=60) as response:  # noqa: S310  # the user's own URL, http(s) only
                return str(response.read().decode())
        except OSError as exc:
            raise RegistryError(f"could not fetch {location} ({exc})") from None
    path = Path(location).expanduser()
    if path.suffix == ".whl":
        import zipfile

        try:
            with zipfile.ZipFile(path) as wheel:
                return wheel.read(WHEEL_MEMBER).decode()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise RegistryError(f"{path} is not an sae-lens wheel holding {WHEEL_MEMBER} ({exc})") from None
    try:
        return path.read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read {path} ({exc})") from None


def dump_table(releases: dict[str, Any], source: str) -> str:
    """The table as JSON with one SAE per line (diffs of a refresh stay readable)."""
    lines = ["{", f'"source": {json.dumps(source)},', '"releases": {']
    for n, (release, spec) in enumerate(releases.items()):
        head = {key: value for key, value in spec.items() if key != "saes"}
        lines.append(f"{json.dumps(release)}: {json.dumps(head)[:-1]}, \"saes\": [")
        lines.extend(f"  {json.dumps(sae)}," for sae in spec["saes"])
        lines[-1] = lines[-1].rstrip(",")
        lines.append("]}" + ("," if n < len(releases) - 1 else ""))
    lines.extend(["}", "}", ""])
    return "\n".join(lines)


@lru_cache(maxsize=2)
def load_table(path: Path = TABLE) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"the SAE release table {path} cannot be read ({exc})") from None
    return dict(data["releases"])


def table_source(path: Path = TABLE) -> str:
    return str(json.loads(path.read_text()).get("source", ""))


def releases(path: Path = TABLE) -> list[str]:
    return sorted(load_table(path))


def lookup(release: str, sae_id: str, path: Path = TABLE) -> RegistryEntry:
    """The table's entry for a release and SAE id; a clear error with close names otherwise."""
    table = load_table(path)
    spec = table.get(release)
    if spec is None:
        near = difflib.get_close_matches(release, list(table), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else " (`manage.py sae_registry` lists them)"
        raise RegistryError(f"unknown SAE release {release!r}{hint}")
    by_id = {row[0]: row for row in spec["saes"]}
    if sae_id not in by_id:
        near = difflib.get_close_matches(sae_id, list(by_id), n=5, cutoff=0.6) or list(by_id)[:5]
        raise RegistryError(f"release {release!r} has no SAE id {sae_id!r} ({len(by_id)} ids; e.g. "
                            f"{', '.join(near)}; `manage.py sae_registry {release}` lists them)")
    _, folder, neuronpedia = by_id[sae_id]
    return RegistryEntry(release=release, sae_id=sae_id, repo_id=spec["repo_id"], path=folder,
                         model=spec["model"], conversion_func=spec.get("conversion_func"),
                         neuronpedia=neuronpedia, config_overrides=dict(spec.get("config_overrides") or {}))


def sae_ids(release: str, path: Path = TABLE) -> list[str]:
    spec = load_table(path).get(release)
    if spec is None:
        raise RegistryError(f"unknown SAE release {release!r}")
    return [row[0] for row in spec["saes"]]
