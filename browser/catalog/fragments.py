"""The parts of a unit's page that only its stats run computed (statistics, histogram, examples),
rendered once and kept in the cache (Redis, the ``default`` cache).

Nothing changes them but a new stats run: a run's examples and statistics are written before the
unit points at the run and never after, a re-harvest is a new run, and a deleted run leaves the unit
with no stats run. So the key names the unit, its stats run (id and creation time: ids restart in a
fresh database, the time does not), the scale the heatmap is drawn at and the vocabulary; nothing
needs invalidating. The label panel, scores and relations change often and are never cached.

On a loaded machine this takes the unit page from about 40 ms to about 10 ms of server CPU
(``bench load``, issue 14 item 15).
"""

from __future__ import annotations

from datetime import datetime

from django.core.cache import cache
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe

from browser.catalog.models import Unit
from browser.catalog.page_selectors import UnitDetail

VERSION = 1  # bump when the fragment templates change what they show
TTL_S = 24 * 3600
PARTS = {"activations": "catalog/_unit_activations.html", "examples": "catalog/_unit_examples.html"}


def fragment_key(unit: Unit, run_created: datetime | None) -> str | None:
    """The cache key of a unit's run fragments; None for a unit no run has harvested (nothing to keep)."""
    if unit.stats_run_id is None or run_created is None:
        return None
    tokenizer = unit.source.model.tokenizer
    vocab = tokenizer.vocab_hash if tokenizer is not None else "-"
    return (f"unit-run:v{VERSION}:{unit.pk}:{unit.stats_run_id}:{run_created.timestamp():.6f}:"
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
