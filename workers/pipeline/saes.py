"""SAEs and transcoders in the catalog: register (weights in a Blob, a Source of kind sae or
transcoder, its units and feature relations), import and export files, load for a harvest, and train
from a corpus. A transcoder is stored like an SAE (an Sae row holding its SAELens transcoder cfg.json);
its source's kind says what it is."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from django.core.exceptions import ValidationError
from django.db import transaction

from browser.catalog.models import Model, Sae, Source, Unit, UnitRelation
from browser.catalog.services import sae_create, source_get_or_create, unit_relations_replace, units_ensure
from browser.core.services import blob_write
from workers.compute import hooks
from workers.compute.config import SourceConfig
from workers.compute.harvest import SourceRuntime
from workers.compute.sae import files, relations
from workers.compute.sae.model import SparseAutoencoder
from workers.pipeline.loader import sae_on

NEAREST = 8  # nearest features kept per feature
DICTIONARY_KINDS = (Source.Kind.SAE, Source.Kind.TRANSCODER)  # sources whose units are an Sae row's latents
ALIGNED = 5  # neurons kept per feature, and features per neuron


class SaeInputError(ValueError):
    """An SAE that cannot be registered, imported or used as asked; nothing was written."""


def expected_d_in(model: Model, hook: str) -> int:
    _, kind = hooks.parse_hook(hook, model.n_layers)
    return model.d_mlp if kind == "mlp.hook_post" else model.d_model


def _check(model: Model, name: str, sae: SparseAutoencoder) -> None:
    hook = sae.cfg.hook_name
    if not hook:
        raise SaeInputError("the SAE names no hook point: give one (e.g. --hook blocks.3.mlp.hook_post)")
    try:
        want = expected_d_in(model, hook)
    except hooks.HookError as exc:
        raise SaeInputError(str(exc)) from None
    if sae.cfg.transcoder:
        _check_transcoder(model, sae)
    if sae.cfg.d_in != want:
        what = "d_mlp" if hook.endswith("mlp.hook_post") else "d_model"
        raise SaeInputError(f"the SAE reads d_in={sae.cfg.d_in} values but {model.name}'s {hook} has "
                            f"{want} ({what}): it was trained on another model or hook point")
    if Source.objects.filter(model=model, name=name).exists():
        raise SaeInputError(f"{model.name} already has a source named {name!r}")
    try:
        Source(model=model, name=name, hook_point=hook, layer=0, kind=Source.Kind.SAE, n_units=1).clean_fields()
    except ValidationError as exc:
        raise SaeInputError(f"bad SAE name {name!r}: {' '.join(exc.messages)}") from None


def _check_transcoder(model: Model, sae: SparseAutoencoder) -> None:
    """A transcoder reads a layer's MLP input and predicts its output: d_model values each."""
    if not sae.cfg.hook_name.endswith(".mlp.hook_in"):
        raise SaeInputError(f"a transcoder reads an MLP's input: its hook must be blocks.L.mlp.hook_in "
                            f"(got {sae.cfg.hook_name})")
    if sae.cfg.out_dim != model.d_model:
        raise SaeInputError(f"the transcoder predicts d_out={sae.cfg.out_dim} values but {model.name}'s MLP "
                            f"writes {model.d_model} (d_model): it was trained on another model")


def source_kind(sae: SparseAutoencoder) -> str:
    return Source.Kind.TRANSCODER if sae.cfg.transcoder else Source.Kind.SAE


def sae_register(*, model: Model, name: str, sae: SparseAutoencoder, quality_stats: dict[str, Any] | None = None,
                 loss_curve: list[dict[str, float]] | None = None, extra: dict[str, Any] | None = None) -> Sae:
    """Store the SAE's weights and register it as a source with its units and relations, in one
    transaction (a clear SaeInputError, and nothing written, for a bad SAE)."""
    _check(model, name, sae)
    layer, _ = hooks.parse_hook(sae.cfg.hook_name, model.n_layers)
    data = files.to_bytes(sae)
    with transaction.atomic():
        blob = blob_write(key=f"sae/{model.pk}/{name}/{hashlib.sha256(data).hexdigest()[:16]}", data=data)
        row = sae_create(model=model, name=name, hook_point=sae.cfg.hook_name, layer=layer,
                         architecture=sae.cfg.architecture, d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae,
                         cfg={**files.saelens_cfg(sae.cfg), **(extra or {})}, weights=blob,
                         quality=quality_stats, loss_curve=loss_curve, kind=source_kind(sae))
        relations_write(sae_row=row, sae=sae)
    return row


def sae_import(*, model: Model, path: Path, name: str, hook: str = "") -> Sae:
    sae = files.read_dir(path, hook_name=hook)
    return sae_register(model=model, name=name, sae=sae, extra={"imported_from": str(path)})


def sae_load(sae_row: Sae) -> SparseAutoencoder:
    """The SAE's module on the CPU (cached per worker by the loader)."""
    return sae_on(sae_row, "cpu")


EXPORT_LAYOUTS = ("saelens", "circuit-tracer")


def sae_export(*, sae_row: Sae, path: Path, layout: str = "saelens") -> list[Path]:
    """Write the SAE or transcoder into the directory ``path``: SAELens's cfg.json and
    sae_weights.safetensors, or (transcoders only) circuit-tracer's layer_N.safetensors."""
    if layout not in EXPORT_LAYOUTS:
        raise SaeInputError(f"unknown layout {layout!r}; choose from {', '.join(EXPORT_LAYOUTS)}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SaeInputError(f"{path} exists and is not an empty directory")
    sae = sae_load(sae_row)
    if layout == "circuit-tracer":
        if not sae.cfg.transcoder:
            raise SaeInputError(f"{sae_row.source.name} is an SAE: circuit-tracer's layer files hold transcoders")
        return [files.write_circuit_tracer(sae, path)]
    files.write_dir(sae, path)
    return [path / "cfg.json", path / files.SAELENS_WEIGHTS]


def sae_find(model: Model, name: str) -> Sae:
    row = Sae.objects.select_related("source", "weights").filter(source__model=model, source__name=name).first()
    if row is None:
        known = ", ".join(Source.objects.filter(model=model, kind__in=DICTIONARY_KINDS).values_list("name", flat=True))
        raise SaeInputError(f"{model.name} has no SAE or transcoder named {name!r} (registered: {known or 'none'})")
    return row


def sae_sources(model: Model, names: list[str]) -> tuple[SourceConfig, ...]:
    """Harvest sources for the named SAEs of the model."""
    rows = [sae_find(model, name) for name in names]
    return tuple(SourceConfig(name=r.source.name, hook=r.source.hook_point, sae_id=r.pk) for r in rows)


def feature_directions(sae: SparseAutoencoder, arch: hooks.Architecture, torch_model: torch.nn.Module,
                       layer: int) -> torch.Tensor:
    """[d_sae, d_model]: what each feature writes to the residual stream (through the MLP's down
    projection for an SAE on mlp.hook_post; a transcoder's decoder writes the MLP's output, through
    the post-MLP norm where there is one)."""
    W_dec = sae.W_dec.detach()
    if sae.cfg.transcoder:
        return arch.through_norm(arch.post_mlp_norm(arch.layers(torch_model)[layer]), W_dec)
    if sae.cfg.hook_name.endswith("mlp.hook_post"):
        neuron_dirs = arch.neuron_directions(arch.layers(torch_model)[layer]).float()  # [d_mlp, d_model]
        return W_dec.to(neuron_dirs.device) @ neuron_dirs
    return W_dec


# ---- relations ---------------------------------------------------------------------------------
def relations_write(*, sae_row: Sae, sae: SparseAutoencoder) -> None:
    """Nearest features by decoder cosine; for SAEs on neurons, the top neurons of each feature
    and (merged with other SAEs on the same neurons) the top features of each neuron."""
    source = sae_row.source
    features = dict(Unit.objects.filter(source=source).values_list("index", "pk"))
    values, indices = relations.nearest_by_cosine(sae.W_dec.detach(), NEAREST)
    unit_relations_replace(unit_ids=list(features.values()), kind=UnitRelation.Kind.DECODER_COSINE,
                           rows=_ranked(features, features, values, indices))
    if not source.hook_point.endswith("mlp.hook_post"):
        return
    neuron_source = source_get_or_create(model=source.model, name=source.hook_point, hook_point=source.hook_point,
                                         layer=source.layer, kind=Source.Kind.NEURONS, n_units=sae.cfg.d_in)
    units_ensure(source=neuron_source)
    neurons = dict(Unit.objects.filter(source=neuron_source).values_list("index", "pk"))
    (f_values, f_indices), (n_values, n_indices) = relations.top_alignment(
        relations.neuron_alignment(sae.W_dec.detach()), ALIGNED)
    unit_relations_replace(unit_ids=list(features.values()), kind=UnitRelation.Kind.ALIGNMENT,
                           rows=_ranked(features, neurons, f_values, f_indices))
    _merge_neuron_alignment(neurons, features, n_values, n_indices)


def _ranked(units: dict[int, int], others: dict[int, int], values: torch.Tensor,
            indices: torch.Tensor) -> Iterator[tuple[int, int, int, float]]:
    for index, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
        for rank, (value, other) in enumerate(zip(row_values, row_indices, strict=True)):
            yield units[index], rank, others[other], value


def _merge_neuron_alignment(neurons: dict[int, int], features: dict[int, int], values: torch.Tensor,
                            indices: torch.Tensor) -> None:
    """Each neuron keeps its top features over every SAE on its hook point: the union of the
    kept rows of other SAEs and this SAE's top rows holds the exact top of all of them."""
    own = set(features.values())
    candidates: dict[int, list[tuple[float, int]]] = {pk: [] for pk in neurons.values()}
    for unit_id, other_id, value in UnitRelation.objects.filter(
            unit_id__in=candidates, kind=UnitRelation.Kind.ALIGNMENT).values_list("unit_id", "other_id", "value"):
        if other_id not in own:
            candidates[unit_id].append((value, other_id))
    for index, (row_values, row_indices) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
        candidates[neurons[index]].extend((v, features[f]) for v, f in zip(row_values, row_indices, strict=True))
    rows = ((unit_id, rank, other, value) for unit_id, kept in candidates.items()
            for rank, (value, other) in enumerate(sorted(kept, key=lambda vo: (-vo[0], vo[1]))[:ALIGNED]))
    unit_relations_replace(unit_ids=list(candidates), kind=UnitRelation.Kind.ALIGNMENT, rows=rows)


# ---- harvest -----------------------------------------------------------------------------------
def sae_source_check(model: Model, config: SourceConfig) -> Source:
    """The catalog source of a harvest's SAE source config (a clear error if it does not fit)."""
    row = Sae.objects.select_related("source").filter(pk=int(config.sae_id or 0)).first()
    if row is None or row.source.model_id != model.pk:
        raise SaeInputError(f"SAE #{config.sae_id} is not an SAE of {model.name}")
    if (row.source.name, row.source.hook_point) != (config.name, config.hook):
        raise SaeInputError(f"SAE #{config.sae_id} is {row.source.name!r} at {row.source.hook_point}, "
                            f"not {config.name!r} at {config.hook}")
    return row.source


def sae_runtime(config: SourceConfig, unit_offset: int, device: torch.device) -> SourceRuntime:
    """The harvest's view of an SAE source: its latents, encoded from the hook's activations."""
    sae = sae_on(Sae.objects.get(pk=int(config.sae_id or 0)), str(device))
    return SourceRuntime(config.name, config.hook, sae.cfg.d_sae, unit_offset, encode=sae.encode, sparse=True,
                         encode_top=sae.encode_top if sae.cfg.architecture == "topk" else None)


def sae_directions(source: Source, arch: hooks.Architecture, torch_model: torch.nn.Module) -> torch.Tensor:
    """[d_sae, d_model] output directions of an SAE source's features (for logit effects)."""
    sae = sae_load(Sae.objects.select_related("weights").get(source=source))
    return feature_directions(sae, arch, torch_model, source.layer)
