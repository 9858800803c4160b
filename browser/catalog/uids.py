"""Stable unit ids: ``model/source/index``, the same in URLs, the API and every export."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from browser.catalog.models import Unit


def unit_uid(unit: Unit) -> str:
    return f"{unit.source.model.name}/{unit.source.name}/{unit.index}"


def storable(value: str) -> bool:
    """Whether PostgreSQL can hold (or be asked about) the string: no NUL, no lone UTF-16 surrogate
    (JSON's "\\ud800" decodes to one; it has no UTF-8 encoding)."""
    return "\x00" not in value and not any("\ud800" <= ch <= "\udfff" for ch in value)


def parse_uid(uid: str) -> tuple[str, str, int]:
    if not storable(uid):
        raise ValidationError(f"{ascii(uid[:200])} is not a unit id (it holds a NUL or a lone surrogate)")
    parts = uid.strip().split("/")
    if len(parts) != 3 or not parts[2].isdigit() or not parts[0] or not parts[1]:
        raise ValidationError(f"{uid[:200]!r} is not a unit id (model/source/index)")
    return parts[0], parts[1], int(parts[2])


def unit_by_uid(uid: str) -> Unit:
    model, source, index = parse_uid(uid)
    unit = (Unit.objects.select_related("source", "source__model")
            .filter(source__model__name=model, source__name=source, index=index).first())
    if unit is None:
        raise ValidationError(f"no unit {uid[:200]!r}")
    return unit
