"""Writes to the catalog: tokenizers, models, sources, SAEs, units and scores."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from browser.catalog.models import Model, Sae, Score, Source, Tokenizer, Unit, UnitRelation
from browser.core.copy import copy_rows
from browser.core.models import Blob


def tokenizer_get_or_create(*, name: str, vocab_hash: str, tokens: list[str], special_ids: list[int]) -> Tokenizer:
    tokenizer, _ = Tokenizer.objects.get_or_create(
        vocab_hash=vocab_hash, defaults={"name": name, "tokens": tokens, "special_ids": special_ids}
    )
    return tokenizer


def model_create(
    *,
    name: str,
    kind: str,
    architecture: str,
    location: str,
    n_layers: int,
    d_model: int,
    d_mlp: int,
    vocab_size: int,
    tokenizer: Tokenizer | None,
    config: dict[str, object] | None = None,
) -> Model:
    model = Model(
        name=name,
        kind=kind,
        architecture=architecture,
        location=location,
        n_layers=n_layers,
        d_model=d_model,
        d_mlp=d_mlp,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        config=config or {},
    )
    model.full_clean()
    model.save()
    return model


def source_get_or_create(*, model: Model, name: str, hook_point: str, layer: int, kind: str, n_units: int) -> Source:
    source, created = Source.objects.get_or_create(
        model=model,
        name=name,
        defaults={"hook_point": hook_point, "layer": layer, "kind": kind, "n_units": n_units},
    )
    if not created and (source.hook_point, source.n_units) != (hook_point, n_units):
        raise IntegrityError(f"source {source} exists with another hook point or size")
    return source


def units_ensure(*, source: Source) -> int:
    """Create the source's unit rows if they are missing (COPY; safe to call twice)."""
    existing = Unit.objects.filter(source=source).count()
    if existing == source.n_units:
        return 0
    with transaction.atomic():
        have = set(Unit.objects.filter(source=source).values_list("index", flat=True))
        rows = (
            (source.pk, index, source.layer, source.kind, "", False, 0, "", Jsonb({}))
            for index in range(source.n_units)
            if index not in have
        )
        return copy_rows(
            "catalog_unit",
            ["source_id", "index", "layer", "kind", "top_token", "dead", "label_count", "search_text", "logit_effects"],
            ["int8", "int4", "int4", "text", "text", "bool", "int4", "text", "jsonb"],
            rows,
        )


def unit_relations_replace(*, unit_ids: list[int], kind: str, rows: Iterable[tuple[int, int, int, float]]) -> int:
    """Replace the ``kind`` relations of the given units by ``rows`` (unit id, rank, other unit
    id, value), written with COPY in the caller's transaction."""
    UnitRelation.objects.filter(unit_id__in=unit_ids, kind=kind).delete()
    return copy_rows(
        "catalog_unitrelation", ["unit_id", "kind", "rank", "other_id", "value"],
        ["int8", "text", "int2", "int8", "float8"],
        ((unit, kind, rank, other, value) for unit, rank, other, value in rows),
    )


def sae_create(*, model: Model, name: str, hook_point: str, layer: int, architecture: str, d_in: int, d_sae: int,
               cfg: dict[str, Any], weights: Blob, quality: dict[str, Any] | None = None,
               loss_curve: list[dict[str, float]] | None = None, kind: str = Source.Kind.SAE) -> Sae:
    """Register an SAE or a transcoder (``kind``): its source (one unit per latent) and its row, in the
    caller's transaction."""
    source = Source.objects.create(model=model, name=name, hook_point=hook_point, layer=layer,
                                   kind=kind, n_units=d_sae)
    row = Sae.objects.create(source=source, architecture=architecture, d_in=d_in, d_sae=d_sae, cfg=cfg,
                             weights=weights, quality=quality or {}, loss_curve=loss_curve or [])
    units_ensure(source=source)
    return row


def scores_replace(*, run: Any, unit_ids: list[int], names: tuple[str, ...], version: int,
                   rows: Iterable[tuple[int, str, float, dict[str, Any]]]) -> int:
    """Replace the machine scores ``names`` at ``version`` of these units by ``rows`` (unit id, name,
    value, details), tied to ``run`` (None for scores of a model rather than a run); call it inside the
    caller's transaction. Every score job writes through it, so a rerun gives the same rows."""
    Score.objects.filter(unit_id__in=unit_ids, name__in=names, version=version, label__isnull=True).delete()
    run_id, now = (run.pk if run is not None else None), timezone.now()
    return copy_rows("catalog_score", ["unit_id", "name", "version", "value", "run_id", "details", "computed"],
                     ["int8", "text", "int4", "float8", "int8", "jsonb", "timestamptz"],
                     ((u, name, version, value, run_id, Jsonb(details), now) for u, name, value, details in rows))


def label_score_set(*, label: Any, name: str, version: int, value: float | None, run_id: int | None = None,
                    details: dict[str, Any] | None = None) -> None:
    """Store (value) or remove (None) one label's score."""
    if value is None:
        Score.objects.filter(name=name, version=version, label=label).delete()
        return
    Score.objects.update_or_create(unit=label.unit, name=name, version=version, label=label,
                                   defaults={"value": value, "run_id": run_id, "details": details or {}})



def sae_quality_merge(*, sae: Sae, stats: dict[str, Any]) -> Sae:
    """Add or replace keys of an SAE's stored quality (a measurement made after registration)."""
    with transaction.atomic():
        row = Sae.objects.select_for_update().get(pk=sae.pk)
        row.quality = {**row.quality, **stats}
        row.save(update_fields=["quality"])
    return row


def model_layers_extend(*, model: Model, n_layers: int) -> None:
    """Raise the model's layer count to ``n_layers`` (an import reached a deeper layer)."""
    Model.objects.filter(pk=model.pk, n_layers__lt=n_layers).update(n_layers=n_layers)


def model_tokenizer_set(*, model: Model, tokenizer: Tokenizer) -> None:
    Model.objects.filter(pk=model.pk).update(tokenizer=tokenizer)


def tokenizer_tokens_replace(*, tokenizer: Tokenizer, tokens: list[str], vocab_hash: str) -> None:
    """Replace an imported vocabulary by a longer one (ids already given out keep their strings)."""
    Tokenizer.objects.filter(pk=tokenizer.pk).update(tokens=tokens, vocab_hash=vocab_hash)


def source_units_extend(*, source: Source, n_units: int) -> None:
    """Raise the source's unit count to ``n_units`` (a later batch of the same SAE reaches further)."""
    if source.n_units < n_units:
        Source.objects.filter(pk=source.pk).update(n_units=n_units)
        source.n_units = n_units
