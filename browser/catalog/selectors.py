"""Reads of the catalog, shared by the pages and their JSON twins."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from browser.catalog.models import Model, Source


def model_list() -> QuerySet[Model]:
    return Model.objects.order_by("name")


def source_list() -> QuerySet[Source]:
    return Source.objects.select_related("model").annotate(unit_count=Count("units")).order_by(
        "model__name", "layer", "kind", "name"
    )
