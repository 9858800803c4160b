"""The in-process nearest-neighbour index of unit embeddings (usearch HNSW, cosine), kept in step with
PostgreSQL: loaded from the newest ``IndexSnapshot`` (if any), then caught up with the vectors written
since, at most once per ``SYNC_EVERY_S`` per process. Torch-free: the web side queries it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import numpy as np
from django.db.models import Q
from django.utils import timezone
from usearch.index import Index

from browser.core.selectors import blob_read
from browser.search.models import IndexSnapshot, UnitEmbedding

DIM = 384
SYNC_EVERY_S = 1.0
# Vectors are read back this far before the last one seen: a transaction that took its timestamp
# earlier may commit later. Rows already applied (same unit, same timestamp) are skipped.
OVERLAP = timedelta(seconds=10)
SYNC_BATCH = 20_000
# HNSW graph degree and search breadth. Embeddings are anisotropic (all in one cone) and a free-text
# query sits far from every unit, so its 10 nearest are near ties (0.0006 apart in cosine): on such
# data degree 16 / breadth 200 found 0.59 of them, 32 / 1000 found 0.99 (30k vectors, docs/design.md).
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 1000


def new_index() -> Index:
    return Index(ndim=DIM, metric="cos", dtype="f16", connectivity=CONNECTIVITY,
                 expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)


def vectors_of(blobs: list[bytes]) -> np.ndarray:
    """[N, DIM] float32 from the stored little-endian ``bytea`` values."""
    if not blobs:
        return np.empty((0, DIM), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), DIM)


class LiveIndex:
    def __init__(self) -> None:
        self.index = new_index()
        self.seen: datetime | None = None
        self.applied: dict[int, datetime] = {}
        self.synced_at = 0.0
        self.lock = threading.Lock()
        snapshot = IndexSnapshot.objects.select_related("blob").order_by("-as_of").first()
        if snapshot is not None:
            restored = Index.restore(blob_read(snapshot.blob))
            if restored is None:
                raise ValueError(f"index snapshot {snapshot.pk} cannot be read")
            self.index = restored
            self.index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # not saved with the index
            self.seen = snapshot.as_of

    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        present = np.asarray(self.index.contains(keys), dtype=bool)
        if present.any():
            self.index.remove(keys[present])
        self.index.add(keys, vectors)

    def remove(self, keys: np.ndarray) -> None:
        present = np.asarray(self.index.contains(keys), dtype=bool)
        if present.any():
            self.index.remove(keys[present])

    def sync(self, *, force: bool = False) -> int:
        """Read vectors written since the last sync; returns how many were applied."""
        if not force and time.monotonic() - self.synced_at < SYNC_EVERY_S:
            return 0
        with self.lock:
            applied, after = 0, None
            while True:
                rows = self._delta(after)
                fresh = [(k, t) for k, t in rows if self.applied.get(k) != t]
                if fresh:
                    vectors = dict(UnitEmbedding.objects.filter(unit_id__in=[k for k, _ in fresh])
                                   .values_list("unit_id", "vector"))
                    keys = [k for k, _ in fresh if vectors.get(k)]
                    gone = [k for k, _ in fresh if k in vectors and not vectors[k]]  # tombstones
                    if keys:
                        self.upsert(np.array(keys, np.uint64), vectors_of([bytes(vectors[k]) for k in keys]))
                    if gone:
                        self.remove(np.array(gone, np.uint64))
                    applied += len(keys)
                self.applied.update(fresh)
                if rows:
                    after = (rows[-1][1], rows[-1][0])
                    self.seen = max(self.seen or rows[-1][1], rows[-1][1])
                if len(rows) < SYNC_BATCH:
                    break
            self._forget_old()
            self.synced_at = time.monotonic()
            return applied

    def _delta(self, after: tuple[datetime, int] | None) -> list[tuple[int, datetime]]:
        """(unit id, updated) of rows from ``seen - OVERLAP`` on, keyset-paged within one sync."""
        qs = UnitEmbedding.objects.order_by("updated", "unit_id")
        if after is not None:
            qs = qs.filter(Q(updated__gt=after[0]) | Q(updated=after[0], unit_id__gt=after[1]))
        elif self.seen is not None:
            qs = qs.filter(updated__gt=self.seen - OVERLAP)
        return list(qs.values_list("unit_id", "updated")[:SYNC_BATCH])

    def _forget_old(self) -> None:
        if self.seen is None:
            return
        cutoff = self.seen - OVERLAP
        self.applied = {k: t for k, t in self.applied.items() if t > cutoff}

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(unit id, cosine similarity), nearest first."""
        if len(self.index) == 0:
            return []
        found = self.index.search(query.astype(np.float32), min(k, len(self.index)))
        return [(int(key), 1.0 - float(d)) for key, d in zip(found.keys, found.distances, strict=True)]

    def vectors(self, keys: list[int]) -> tuple[list[int], np.ndarray]:
        """The stored vectors of those of ``keys`` the index holds (for exact search of a small set)."""
        if not keys:
            return [], np.empty((0, DIM), np.float32)
        present = np.asarray(self.index.contains(np.array(keys, np.uint64)), dtype=bool)
        held = [k for k, p in zip(keys, present.tolist(), strict=True) if p]
        if not held:
            return [], np.empty((0, DIM), np.float32)
        rows = self.index.get(np.array(held, np.uint64), dtype="f32")
        return held, np.vstack(rows).reshape(len(held), DIM)  # type: ignore[arg-type]


_live: dict[str, LiveIndex] = {}


def live_index() -> LiveIndex:
    """This process's index, caught up with PostgreSQL (within ``SYNC_EVERY_S``)."""
    if "index" not in _live:
        _live["index"] = LiveIndex()
    _live["index"].sync()
    return _live["index"]


def reset_live_index() -> None:
    """Forget this process's index (tests, after a new snapshot)."""
    _live.clear()


def snapshot_age() -> timedelta | None:
    newest = IndexSnapshot.objects.order_by("-as_of").values_list("as_of", flat=True).first()
    return None if newest is None else timezone.now() - newest
