"""The parts of a unit's page that only its stats run computed (statistics, histogram, examples),
rendered once and kept in the cache (Redis, the ``default`` cache).

Nothing changes them but a new stats run: a run's examples and statistics are written before the
unit points at the run and never after, a re-harvest is a new run, and a deleted run leaves the unit
with no stats run. So the key names the unit, its stats run (id and creation time: ids restart in a
fresh database, the time does not), the scale the heatmap is drawn at and the vocabulary; nothing
needs invalidating. The label panel, scores and relations change often and are never cached. The
JSON twin keeps its serialized run parts under the same key (``unit_run_data``).

On a loaded machine this takes the unit page from about 40 ms to about 10 ms of server CPU
(``bench load``, issue 14 item 15).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.template.loader import render_to_string
from django.urls import get_script_prefix
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Source, Unit
from browser.catalog.page_selectors import UnitDetail
from browser.catalog.selectors import UnitFilters
from browser.core.fragments import cached_items

VERSION = 1  # bump when the fragment templates change what they show
TTL_S = 24 * 3600
PARTS = {"activations": "catalog/_unit_activations.html", "examples": "catalog/_unit_examples.html"}


def fragment_key(unit: Unit, run_created: datetime | None, kind: str = "unit-run") -> str | None:
    """The cache key of a unit's run fragments (``kind``: the HTML parts, or ``unit-run-json`` for the
    JSON twin's); None for a unit no run has harvested (nothing to keep)."""
    if unit.stats_run_id is None or run_created is None:
        return None
    tokenizer = unit.source.model.tokenizer
    vocab = tokenizer.vocab_hash if tokenizer is not None else "-"
    return (f"{kind}:v{VERSION}:{unit.pk}:{unit.stats_run_id}:{run_created.timestamp():.6f}:"
            f"{unit.max_activation!r}:{vocab}")


def unit_run_fragments(d: UnitDetail, run_created: datetime | None) -> dict[str, SafeString]:
    """The rendered parts for ``d``'s unit, from the cache or rendered (and kept) now."""
    key = fragment_key(d.unit, run_created)
    if key is not None:
        kept = cache.get(key)
        if isinstance(kept, dict) and kept.keys() == PARTS.keys():
            return {name: mark_safe(html) for name, html in kept.items()}  # noqa: S308  (rendered below)
    context = {"d": d, "unit": d.unit}
    parts = {name: render_to_string(template, context) for name, template in PARTS.items()}
    if key is not None:
        cache.set(key, parts, TTL_S)
    return {name: mark_safe(html) for name, html in parts.items()}  # noqa: S308  (autoescaped templates)


def unit_run_data(d: UnitDetail, run_created: datetime | None,
                  build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON twin's run parts (statistics and examples, serialized by ``build``: most of the
    answer's CPU), from the cache or built (and kept) now; the same key as the HTML parts."""
    key = fragment_key(d.unit, run_created, kind="unit-run-json")
    if key is not None:
        kept = cache.get(key)
        if isinstance(kept, dict):
            return kept
    data = build()
    if key is not None:
        cache.set(key, data, TTL_S)
    return data


ROW_VERSION = 1  # bump when _unit_row.html changes what it shows


def _row_content(u: Unit, with_source: bool, sort_score: str | None) -> tuple[Any, ...]:
    """What ``catalog/_unit_row.html`` shows of a unit (with its two newest labels)."""
    labels = [label.text for label in list(u.labels.all())[:2]]
    return (get_script_prefix(), u.pk, u.source.model.name, u.source.name, u.index, u.layer, u.kind, u.density,
            u.max_activation, u.mean_activation, u.top_token, u.dead, with_source, sort_score,
            getattr(u, "sort_value", None) if sort_score else None, labels)


def unit_rows(units: Sequence[Unit], *, source: Source | None, filters: UnitFilters) -> SafeString:
    """The rows of a unit list (the source page, search), each kept in the cache by its content: a
    row changes only when its unit's two newest labels do."""
    sort_score = filters.sort_score
    return cached_items(f"unit-row-v{ROW_VERSION}", units, lambda u: _row_content(u, source is not None, sort_score),
                        "catalog/_unit_row.html", lambda u: {"u": u, "source": source, "f": filters})
