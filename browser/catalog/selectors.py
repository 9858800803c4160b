"""Reads of the catalog, shared by the pages and their JSON twins: models, sources, one unit by
id, and the filtered unit list with keyset pagination (a unit's scores and relations are in
``unit_selectors``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.contrib.postgres.search import SearchQuery
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from browser.catalog.models import Model, Score, Source, Unit
from browser.catalog.uids import parse_uid
from browser.labels.selectors import has_label_containing, labels_newest_first

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
STAT_SORTS = ("density", "max_activation", "mean_activation")
# One-line explanations of the scores the workers compute (unknown names are shown without one).
class FilterError(ValueError):
    """A query parameter that cannot be understood; the message says which and why."""


class Params(Protocol):
    def get(self, key: str, default: Any = ...) -> Any: ...
    def getlist(self, key: str) -> list[str]: ...


# ---- models and sources ------------------------------------------------------------------------
def model_list() -> QuerySet[Model]:
    return Model.objects.order_by("name")


def model_get(*, name: str) -> Model:
    return get_object_or_404(Model, name=name)


def source_list() -> QuerySet[Source]:
    return Source.objects.select_related("model").annotate(unit_count=Count("units")).order_by(
        "model__name", "layer", "kind", "name"
    )


def source_get(*, model_name: str, source_name: str) -> Source:
    return get_object_or_404(Source.objects.select_related("model"), model__name=model_name, name=source_name)


def unit_get(*, model_name: str, source_name: str, index: int) -> Unit:
    # The vocabulary itself is read once per process by browser.examples.selectors.vocab_for.
    return get_object_or_404(
        Unit.objects.select_related("source", "source__model", "source__model__tokenizer")
        .defer("search", "source__model__tokenizer__tokens")
        .annotate(stats_run_created=F("stats_run__created")),  # keys the page's cached fragments
        source__model__name=model_name, source__name=source_name, index=index,
    )


def unit_stats_run_created(unit: Unit) -> datetime | None:
    """When the unit's stats run was created (read with the unit by ``unit_get``)."""
    if unit.stats_run_id is None:
        return None
    if hasattr(unit, "stats_run_created"):
        return unit.stats_run_created  # type: ignore[no-any-return]
    return Unit.objects.filter(pk=unit.pk).values_list("stats_run__created", flat=True).first()


def unit_by_id(value: str) -> Unit:
    """The unit with the stable id ``model/source/index``; 404 otherwise."""
    try:
        model_name, source_name, index = parse_uid(value)
    except ValidationError as exc:
        raise Http404(exc.messages[0]) from None
    return unit_get(model_name=model_name, source_name=source_name, index=index)


# ---- the unit list -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreRange:
    name: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class UnitFilters:
    model: str = ""
    source: str = ""
    layer: int | None = None
    kind: str = ""
    density_min: float | None = None
    density_max: float | None = None
    scores: tuple[ScoreRange, ...] = ()
    labeled: bool | None = None
    label: str = ""
    top_token: str = ""
    q: str = ""
    sort: str = "index"
    semantic: bool = False  # mode=semantic: q ranked by meaning, merged with full text (browser/search)

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")

    @property
    def sort_key(self) -> str:
        return self.sort.lstrip("-")

    @property
    def sort_score(self) -> str | None:
        return self.sort_key.partition(":")[2] if self.sort_key.startswith("score:") else None


def _number(raw: str | None, what: str) -> float | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise FilterError(f"{what} must be a number, not {raw!r}") from None


def _float(params: Params, key: str) -> float | None:
    return _number(params.get(key), key)


def _score_ranges(params: Params) -> tuple[ScoreRange, ...]:
    """Repeated ``score=name:min:max`` (either bound may be empty), plus the form's single
    score_name/score_min/score_max."""
    out = []
    for raw in params.getlist("score"):
        name, _, bounds = raw.partition(":")
        low, _, high = bounds.partition(":")
        out.append(ScoreRange(name.strip(), _number(low, "score min"), _number(high, "score max")))
    if (params.get("score_name") or "").strip():
        out.append(ScoreRange(params.get("score_name").strip(), _float(params, "score_min"), _float(params, "score_max")))
    if any(not r.name for r in out):
        raise FilterError("a score filter needs a name: score=name:min:max")
    return tuple(out)


class _Dict(dict[str, str]):
    def getlist(self, key: str) -> list[str]:
        return []


def parse_unit_filters(params: Params | Mapping[str, str], **fixed: str) -> UnitFilters:
    """The filters of a query string; ``fixed`` pins some (the source page pins model and source)."""
    if not hasattr(params, "getlist"):
        params = _Dict(params)
    p: Params = params  # type: ignore[assignment]
    layer = (p.get("layer") or "").strip()
    if layer and not layer.lstrip("-").isdigit():
        raise FilterError(f"layer must be an integer, not {layer!r}")
    labeled = (p.get("labeled") or "").strip().lower()
    if labeled not in ("", "1", "0", "true", "false", "yes", "no"):
        raise FilterError("labeled must be 1 or 0")
    kind = (p.get("kind") or "").strip()
    if kind and kind not in Source.Kind.values:
        raise FilterError(f"kind must be one of {', '.join(Source.Kind.values)}")
    sort = (p.get("sort") or "index").strip()
    key = sort.lstrip("-")
    if key not in ("index", *STAT_SORTS) and not (key.startswith("score:") and len(key) > 6):
        raise FilterError(f"sort must be index, {', '.join(STAT_SORTS)} or score:NAME (prefix - for descending)")
    source = (p.get("source") or "").strip()
    model = (p.get("model") or "").strip()
    if "/" in source and not model:
        model, source = source.split("/", 1)
    return UnitFilters(
        model=fixed.get("model", model), source=fixed.get("source", source),
        layer=int(layer) if layer else None, kind=kind,
        density_min=_float(p, "density_min"), density_max=_float(p, "density_max"),
        scores=_score_ranges(p), labeled=None if not labeled else labeled in ("1", "true", "yes"),
        label=(p.get("label") or "").strip(), top_token=p.get("top_token") or "",
        q=(p.get("q") or "").strip(), sort=sort, semantic=(p.get("mode") or "").strip() == "semantic",
    )


def score_version(name: str) -> int:
    """The latest version of a score: filters and sorts read that one only."""
    return Score.objects.filter(name=name).order_by("-version").values_list("version", flat=True).first() or 1


def _score_rows(name: str) -> QuerySet[Score]:
    return Score.objects.filter(name=name, version=score_version(name), label__isnull=True)


def unit_queryset(filters: UnitFilters) -> QuerySet[Unit]:
    """The units that pass the filters, unordered."""
    qs = Unit.objects.all()
    if filters.model or filters.source:
        # Resolved first: with source ids as constants PostgreSQL uses the per-source indexes.
        sources = Source.objects.all()
        sources = sources.filter(model__name=filters.model) if filters.model else sources
        sources = sources.filter(name=filters.source) if filters.source else sources
        qs = qs.filter(source_id__in=list(sources.values_list("pk", flat=True)))
    if filters.layer is not None:
        qs = qs.filter(layer=filters.layer)
    if filters.kind:
        qs = qs.filter(kind=filters.kind)
    if filters.density_min is not None:
        qs = qs.filter(density__gte=filters.density_min)
    if filters.density_max is not None:
        qs = qs.filter(density__lte=filters.density_max)
    for r in filters.scores:
        rows = _score_rows(r.name).filter(unit=OuterRef("pk"))
        rows = rows.filter(value__gte=r.min) if r.min is not None else rows
        rows = rows.filter(value__lte=r.max) if r.max is not None else rows
        qs = qs.filter(Exists(rows))
    if filters.labeled is not None:
        qs = qs.filter(label_count__gt=0) if filters.labeled else qs.filter(label_count=0)
    if filters.label:
        qs = qs.filter(label_count__gt=0).filter(
            has_label_containing(filters.label))
    if filters.top_token:
        qs = qs.filter(top_token=filters.top_token)
    if filters.q:
        qs = qs.filter(search=SearchQuery(filters.q, config="simple", search_type="websearch"))
    return qs


def _sorted(qs: QuerySet[Unit], filters: UnitFilters) -> tuple[QuerySet[Unit], list[str]]:
    """The queryset with a ``sort_value`` column where needed, and its keyset columns."""
    if filters.sort_key == "index":
        return qs, ["source_id", "index"]
    if filters.sort_score is not None:
        name = filters.sort_score
        qs = qs.filter(scores__name=name, scores__version=score_version(name), scores__label__isnull=True)
        return qs.annotate(sort_value=F("scores__value")), ["sort_value", "id"]
    return qs.filter(**{f"{filters.sort_key}__isnull": False}).annotate(sort_value=F(filters.sort_key)), [
        filters.sort_key, "id"]


def _after(keys: Sequence[str], values: Sequence[Any], down: bool) -> Q:
    """Rows strictly after ``values`` in the order of ``keys``; the leading ``>=`` lets
    PostgreSQL use an index range instead of scanning for the OR."""
    gt, ge = ("lt", "lte") if down else ("gt", "gte")
    if len(keys) == 1:
        return Q(**{f"{keys[0]}__{gt}": values[0]})
    rest = _after(keys[1:], values[1:], down)
    return Q(**{f"{keys[0]}__{ge}": values[0]}) & (Q(**{f"{keys[0]}__{gt}": values[0]}) | (
        Q(**{keys[0]: values[0]}) & rest))


def encode_cursor(direction: str, values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([direction, list(values)]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n_keys: int) -> tuple[str, list[Any]]:
    try:
        direction, values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if direction in ("after", "before") and isinstance(values, list) and len(values) == n_keys:
            return direction, values
    except (ValueError, TypeError):
        pass
    raise FilterError("the cursor is not valid for this sort; start again from the first page")


@dataclass
class UnitPage:
    units: list[Unit]
    next: str | None
    previous: str | None
    filters: UnitFilters
    score_names: list[str] = field(default_factory=list)


def unit_page(filters: UnitFilters, *, cursor: str | None = None, size: int = PAGE_SIZE) -> UnitPage:
    """One page of the filtered, sorted units (keyset pagination: cost independent of depth)."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    qs, keys = _sorted(unit_queryset(filters), filters)
    direction, values = decode_cursor(cursor, len(keys)) if cursor else ("after", None)
    down = filters.descending != (direction == "before")
    if values is not None:
        qs = qs.filter(_after(keys, values, down))
    order = [f"-{k}" if down else k for k in keys]
    # Keys first, rows second: the first query reads only columns the covering sort indexes hold,
    # so rows that a filter skips are never fetched from the table (index-only scan).
    found = list(qs.order_by(*order).values_list("pk", *keys)[: size + 1])
    more = len(found) > size
    found = found[:size]
    if direction == "before":
        found.reverse()
    by_id = {u.pk: u for u in Unit.objects.filter(pk__in=[row[0] for row in found])
             .select_related("source", "source__model").defer("search", "logit_effects", "search_text")
             .prefetch_related(labels_newest_first())}
    rows = []
    for pk, *key in found:
        if pk in by_id:  # else deleted between the two reads
            if filters.sort_key != "index":
                by_id[pk].sort_value = key[0]  # type: ignore[attr-defined]
            rows.append(by_id[pk])
    has_next, has_prev = (more, values is not None) if direction == "after" else (True, more)
    return UnitPage(rows, encode_cursor("after", found[-1][1:]) if found and has_next else None,
                    encode_cursor("before", found[0][1:]) if found and has_prev else None, filters)


def score_names() -> list[str]:
    """The distinct score names, by a skip scan of the (name, value) index: a plain DISTINCT would
    read every score row on every unit list."""
    with connection.cursor() as cursor:
        cursor.execute(
            """WITH RECURSIVE names(name) AS (
                 SELECT min(name) FROM catalog_score
                 UNION ALL SELECT (SELECT min(name) FROM catalog_score WHERE name > names.name)
                   FROM names WHERE names.name IS NOT NULL)
               SELECT name FROM names WHERE name IS NOT NULL""")
        return [row[0] for row in cursor.fetchall()]
