"""Writes and reads of the source overviews: the stored map of a source (for its current state) and
feature families. Torch-free; the layouts and matches are computed by ``workers.pipeline.maps``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from django.db import transaction

from browser.catalog.models import Sae, Source, Unit
from browser.examples.models import Example
from browser.search.models import FamilyLink, SourceMap


def source_state(source: Source) -> str:
    """What a map of the source depends on: its units and the weights of their directions (the SAE's
    weights blob, or the model it reads). A replaced SAE or model gives a new state."""
    sae_weights = Sae.objects.filter(source=source).values_list("weights_id", flat=True).first()
    model = source.model
    parts = [source.kind, source.hook_point, str(source.n_units), str(sae_weights), str(model.pk), model.location,
             str(model.config.get("weights_sha", ""))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def source_map_store(*, source: Source, state: str, coords: np.ndarray, method: str) -> SourceMap:
    """Keep the layout for ``state`` (maps of other states of the source are dropped)."""
    with transaction.atomic():
        SourceMap.objects.filter(source=source).exclude(state=state).delete()
        row, _ = SourceMap.objects.update_or_create(
            source=source, state=state,
            defaults={"coords": np.asarray(coords, "<f4").tobytes(), "method": method})
    return row


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


def family_links_replace(*, unit_ids: Iterable[int], kind: str, links: list[tuple[int, int, float]]) -> int:
    """Replace the ``kind`` links whose child is one of ``unit_ids`` by ``links`` (parent, child, cosine),
    with their co-activation (``top_context_overlap``)."""
    overlap = top_context_overlap([(p, c) for p, c, _ in links])
    with transaction.atomic():
        FamilyLink.objects.filter(child_id__in=list(unit_ids), kind=kind).delete()
        FamilyLink.objects.bulk_create([FamilyLink(parent_id=p, child_id=c, kind=kind, cosine=v,
                                                   coactivation=overlap.get((p, c))) for p, c, v in links],
                                       batch_size=5000)
    return len(links)


def unit_ids_by_index(source: Source) -> dict[int, int]:
    return dict(Unit.objects.filter(source=source).values_list("index", "pk"))
