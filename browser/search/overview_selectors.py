"""Reads of the source overviews: the stored map of a source (for its current state) and what the
feature families are computed from. Torch-free; the layouts and matches are computed by
``workers.pipeline.maps`` and written by ``browser.search.services``."""

from __future__ import annotations

import hashlib

import numpy as np

from browser.catalog.models import Sae, Source, Unit
from browser.examples.models import Example
from browser.search.models import SourceMap


def source_state(source: Source) -> str:
    """What a map of the source depends on: its units and the weights of their directions (the SAE's
    weights blob, or the model it reads). A replaced SAE or model gives a new state."""
    sae_weights = Sae.objects.filter(source=source).values_list("weights_id", flat=True).first()
    model = source.model
    parts = [source.kind, source.hook_point, str(source.n_units), str(sae_weights), str(model.pk), model.location,
             str(model.config.get("weights_sha", ""))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def source_map_row(source: Source) -> SourceMap | None:
    """The stored map of the source's current state, without its coordinates."""
    return SourceMap.objects.filter(source=source, state=source_state(source)).defer("coords").first()


def source_map_current(source: Source) -> tuple[SourceMap | None, np.ndarray | None]:
    """The stored map of the source's current state and its [n, 2] coordinates; (None, None) if none."""
    row = SourceMap.objects.filter(source=source, state=source_state(source)).first()
    if row is None:
        return None, None
    return row, np.frombuffer(bytes(row.coords), dtype="<f4").reshape(-1, 2)


def top_context_overlap(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """For (parent, child) unit ids: the share of the child's top contexts (every run's) that are
    also top contexts of the parent. Children without top examples are left out."""
    ids = {u for pair in pairs for u in pair}
    contexts: dict[int, set[int]] = {}
    rows = Example.objects.filter(unit_id__in=ids, kind=Example.Kind.TOP).values_list("unit_id", "context_id")
    for unit_id, context_id in rows.iterator(chunk_size=50_000):
        contexts.setdefault(unit_id, set()).add(context_id)
    return {(p, c): len(contexts[c] & contexts.get(p, set())) / len(contexts[c]) for p, c in pairs if contexts.get(c)}


def unit_ids_by_index(source: Source) -> dict[int, int]:
    return dict(Unit.objects.filter(source=source).values_list("index", "pk"))
