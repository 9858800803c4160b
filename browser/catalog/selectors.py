"""Reads of the catalog, shared by the pages and their JSON twins."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from browser.catalog.models import Model, Source, Unit


def model_list() -> QuerySet[Model]:
    return Model.objects.order_by("name")


def source_list() -> QuerySet[Source]:
    return Source.objects.select_related("model").annotate(unit_count=Count("units")).order_by(
        "model__name", "layer", "kind", "name"
    )


def source_get(*, model_name: str, source_name: str) -> Source:
    from django.shortcuts import get_object_or_404

    return get_object_or_404(Source.objects.select_related("model"), model__name=model_name, name=source_name)


def unit_list(*, source: Source) -> QuerySet[Unit]:
    return Unit.objects.filter(source=source).order_by("index")


def unit_get(*, model_name: str, source_name: str, index: int) -> Unit:
    from django.shortcuts import get_object_or_404

    return get_object_or_404(
        Unit.objects.select_related("source", "source__model", "source__model__tokenizer"),
        source__model__name=model_name, source__name=source_name, index=index,
    )
