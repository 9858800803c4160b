"""Semantic search: the query embedded on the web side (numpy MiniLM), nearest units from the live
index, kept only where they pass the list's filters, merged with the full-text hits by reciprocal
rank fusion. Pages of the unit list call ``semantic_page`` when ``mode=semantic``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db.models import F, Prefetch

from browser.catalog.models import Unit
from browser.catalog.selectors import PAGE_SIZE, UnitFilters, UnitPage, unit_page, unit_queryset
from browser.labels.models import Label
from browser.search.encoder import query_encoder
from browser.search.index import live_index
from browser.search.models import WindowEmbedding

CANDIDATES = 200  # first ANN fetch; doubled while the filters leave too few
MAX_CANDIDATES = 20_000
EXACT_LIMIT = 200_000  # a filtered set this small is searched exactly when the ANN pass falls short
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)


@dataclass(frozen=True)
class Hit:
    unit_id: int
    similarity: float


def semantic_hits(filters: UnitFilters, query: np.ndarray, k: int) -> list[Hit]:
    """The ``k`` units nearest to ``query`` among those passing ``filters`` (its ``q`` ignored)."""
    index = live_index()
    allowed = unit_queryset(replace(filters, q=""))
    unfiltered = allowed.query.where.children == []
    n = CANDIDATES
    while True:
        found = index.search(query, max(n, k))
        if unfiltered:
            return [Hit(u, s) for u, s in found[:k]]
        passing = set(allowed.filter(id__in=[u for u, _ in found]).values_list("id", flat=True))
        hits = [Hit(u, s) for u, s in found if u in passing]
        if len(hits) >= k or len(found) < max(n, k) or n >= MAX_CANDIDATES:
            break
        n *= 4
    if len(hits) >= k:
        return hits[:k]
    return _exact(allowed, index, query, k) or hits


def _exact(allowed: object, index: object, query: np.ndarray, k: int) -> list[Hit]:
    """Brute force over a filtered set small enough to read its ids (vectors come from the index)."""
    ids = list(allowed.values_list("id", flat=True)[: EXACT_LIMIT + 1])  # type: ignore[attr-defined]
    if len(ids) > EXACT_LIMIT:
        return []
    held, vectors = index.vectors(ids)  # type: ignore[attr-defined]
    if not held:
        return []
    sims = vectors @ query
    top = np.argsort(-sims)[:k]
    return [Hit(held[i], float(sims[i])) for i in top]


def text_hits(filters: UnitFilters, k: int) -> list[int]:
    """Units matching the full-text query, best ``ts_rank`` first."""
    query = SearchQuery(filters.q, config="simple", search_type="websearch")
    return list(unit_queryset(filters).annotate(rank=SearchRank(F("search"), query))
                .order_by("-rank", "id").values_list("id", flat=True)[:k])


def fuse(semantic: list[Hit], text: list[int], k: int) -> list[int]:
    """Reciprocal rank fusion: score = sum over lists of 1 / (RRF_K + rank)."""
    score: dict[int, float] = {}
    for rank, hit in enumerate(semantic):
        score[hit.unit_id] = score.get(hit.unit_id, 0.0) + 1.0 / (RRF_K + rank)
    for rank, unit_id in enumerate(text):
        score[unit_id] = score.get(unit_id, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(score, key=lambda u: -score[u])[:k]


def semantic_page(filters: UnitFilters, *, size: int) -> UnitPage:
    """One page (no cursor: a ranking, not an order) of units meaning ``filters.q``, filters applied."""
    query = query_encoder().encode(filters.q)
    semantic = semantic_hits(filters, query, size)
    ids = fuse(semantic, text_hits(filters, size), size)
    similarity = {h.unit_id: h.similarity for h in semantic}
    rows = {u.pk: u for u in Unit.objects.filter(pk__in=ids).select_related("source", "source__model")
            .defer("search", "logit_effects", "search_text")
            .prefetch_related(Prefetch("labels", queryset=Label.objects.order_by("-updated")))}
    units = [rows[i] for i in ids if i in rows]
    for unit in units:
        unit.similarity = similarity.get(unit.pk)  # type: ignore[attr-defined]
    return UnitPage(units, None, None, filters)


def unit_list_page(filters: UnitFilters, *, cursor: str | None = None, size: int = PAGE_SIZE) -> UnitPage:
    """The unit list's page: ranked by meaning with ``mode=semantic`` and a query, else ``unit_page``."""
    if filters.semantic and filters.q:
        return semantic_page(filters, size=size)
    return unit_page(filters, cursor=cursor, size=size)


WINDOW_LOOKUP_BATCH = 5_000  # hashes per query


def window_embeddings(*, embedder: str, shas: list[bytes]) -> dict[bytes, np.ndarray]:
    """The cached vectors (float32) of the windows whose text SHA-256 is in ``shas``, under ``embedder``."""
    out: dict[bytes, np.ndarray] = {}
    for start in range(0, len(shas), WINDOW_LOOKUP_BATCH):
        rows = WindowEmbedding.objects.filter(embedder=embedder, text_sha__in=shas[start:start + WINDOW_LOOKUP_BATCH])
        for sha, vector in rows.values_list("text_sha", "vector"):
            out[bytes(sha)] = np.frombuffer(bytes(vector), dtype="<f4")
    return out
