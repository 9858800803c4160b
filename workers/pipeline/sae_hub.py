"""SAEs by name: an SAELens release and id, or a hub repo and folder, resolved to files in the
local Hugging Face cache (downloaded when online) and registered like a local directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from browser.catalog.models import Model, Sae, Source
from workers.compute import hooks, hub
from workers.compute.sae import files, registry
from workers.pipeline.saes import SaeInputError, sae_register

# A hub folder's SAE layouts, in the order they are looked for in the cache.
FOLDER_LAYOUTS: dict[str, tuple[str, ...]] = {
    "sparsify": ("cfg.json", files.SPARSIFY_WEIGHTS),
    "SAELens": ("cfg.json", files.SAELENS_WEIGHTS),
    "Gemma Scope": (files.GEMMA_SCOPE_NPZ,),
    "Gemma Scope 2": (files.GEMMA_SCOPE_2,),
}
# The release table's config_overrides that change how an SAE encodes (SAELens applies them over cfg.json).
ENCODING_OVERRIDES = ("normalize_activations", "apply_b_dec_to_input")
NOT_FROM_THE_TABLE = ("transcoders of SAELens's release table (Gemma Scope's) are not imported yet: their files do "
                      "not say where their output goes, so {what} was not registered; import a circuit-tracer "
                      "layer_N.safetensors file or an SAELens transcoder directory instead")


def default_name(*parts: str) -> str:
    """A source name from a release and id (or repo and folder): other characters become dots."""
    name = re.sub(r"[^A-Za-z0-9._-]+", ".", ".".join(p for p in parts if p)).strip(".-_")
    return name[:100].rstrip(".") or "sae"


def sae_import_files(*, model: Model, path: Path, name: str, hook: str = "",
                     provenance: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Sae:
    """Read any known layout at ``path`` and register it (a transcoder as a source of kind transcoder)."""
    sae, fmt = files.read_any(path, hook)
    changes = {key: value for key, value in (overrides or {}).items() if key in ENCODING_OVERRIDES}
    if changes:
        sae = sae.with_config(**changes)
    if fmt in ("gemma_scope", "gemma_scope_2") and sae.cfg.hook_name.endswith("mlp.hook_in"):
        raise SaeInputError(NOT_FROM_THE_TABLE.format(what=f"the Gemma Scope file at {path}"))
    return sae_register(model=model, name=name, sae=sae, extra={"imported_from": str(path), **(provenance or {})})


def sae_import_release(*, model: Model, release: str, sae_id: str, name: str = "", hook: str = "") -> Sae:
    """An SAE of SAELens's release table, from the hub cache (or the hub when online)."""
    try:
        entry = registry.lookup(release, sae_id)
    except registry.RegistryError as exc:
        raise SaeInputError(str(exc)) from None
    what = f"SAE {sae_id!r} of release {release!r}"
    if entry.is_transcoder:
        raise SaeInputError(NOT_FROM_THE_TABLE.format(what=what))
    if not entry.supported:
        raise SaeInputError(f"{what} is stored in SAELens's {entry.conversion_func!r} layout, which the product "
                            f"does not read yet (it reads the SAELens layout and Gemma Scope's params.npz)")
    name = name or default_name(release, sae_id)
    hook = hook or entry.hook_name()
    _precheck(model, name, hook)
    folder = hub.fetch_files(entry.repo_id, entry.files(), what)[0].parent
    provenance = {"release": release, "sae_id": sae_id, "repo_id": entry.repo_id, "repo_path": entry.path,
                  "neuronpedia": entry.neuronpedia, "registry": registry.table_source()}
    return sae_import_files(model=model, path=folder, name=name, hook=hook, provenance=provenance,
                            overrides=entry.config_overrides)


def sae_import_repo(*, model: Model, repo_id: str, path: str, name: str = "", hook: str = "") -> Sae:
    """An SAE folder of any hub repo (sparsify, SAELens, Gemma Scope), or one circuit-tracer transcoder
    file (``layer_N.safetensors``, read as blocks.N.mlp.hook_in unless ``hook`` says otherwise)."""
    what = f"SAE {path!r} of hub repo {repo_id!r}"
    name = name or default_name(repo_id.split("/")[-1], path.removesuffix(".safetensors"))
    _precheck(model, name, hook)
    if path.endswith(".safetensors"):
        [file] = hub.fetch_files(repo_id, [path], f"transcoder {path!r} of hub repo {repo_id!r}")
        return sae_import_files(model=model, path=file, name=name, hook=hook,
                                provenance={"repo_id": repo_id, "repo_path": path})
    folder = hub.fetch_folder(repo_id, path, FOLDER_LAYOUTS, what)
    provenance = {"repo_id": repo_id, "repo_path": path}
    return sae_import_files(model=model, path=folder, name=name, hook=hook, provenance=provenance)


def _precheck(model: Model, name: str, hook: str) -> None:
    """What can be refused before a download: a taken name, a hook point the model lacks."""
    if Source.objects.filter(model=model, name=name).exists():
        raise SaeInputError(f"{model.name} already has a source named {name!r} (give another with --name)")
    if hook:
        try:
            hooks.parse_hook(hook, model.n_layers)
        except hooks.HookError as exc:
            raise SaeInputError(f"the SAE reads {hook}, which {model.name} cannot hook: {exc}") from None
