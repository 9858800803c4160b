"""Writes to the catalog: tokenizers, models, sources and units."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from psycopg.types.json import Jsonb

from browser.catalog.models import Model, Source, Tokenizer, Unit, UnitRelation
from browser.core.copy import copy_rows


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
