"""The web process's vector index follows the table: a snapshot plus the rows written since, a row
committed late with an earlier timestamp, a re-embedded unit replaced (not duplicated); filtered
searches return the exact nearest units among those passing the filters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from browser.catalog.selectors import parse_unit_filters
from browser.search.index import DIM, LiveIndex, live_index, reset_live_index
from browser.search.models import UnitEmbedding
from browser.search.selectors import semantic_hits
from browser.search.services import embeddings_store
from tests.search.planted import plant
from workers.pipeline.search import snapshot_build


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _store(ids: list[int], vectors: np.ndarray) -> None:
    embeddings_store(rows=[(u, vectors[i], f"sha{u}") for i, u in enumerate(ids)], embedder="test")


def _units(cast: Any) -> list[int]:
    data = plant(cast.owner)
    UnitEmbedding.objects.all().delete()
    return [u.pk for u in data.targets + data.distractors]


def test_snapshot_then_newer_rows_then_a_late_commit(cast: Any) -> None:
    ids = _units(cast)
    vectors = _unit_vectors(len(ids), 0)
    _store(ids[:10], vectors[:10])
    assert snapshot_build() == 10
    _store(ids[10:20], vectors[10:20])
    index = LiveIndex()
    assert len(index.index) == 10  # the snapshot
    index.sync(force=True)
    assert len(index.index) == 20
    # A transaction that took its timestamp before the last row seen commits only now.
    _store(ids[20:21], vectors[20:21])
    UnitEmbedding.objects.filter(unit_id=ids[20]).update(updated=index.seen - timedelta(seconds=5))
    assert index.sync(force=True) == 1 and len(index.index) == 21
    assert index.sync(force=True) == 0  # nothing new: rows in the overlap are not applied again
    for i in (0, 15, 20):
        assert index.search(vectors[i], 1)[0][0] == ids[i]


def test_a_re_embedded_unit_moves_instead_of_appearing_twice(cast: Any) -> None:
    ids = _units(cast)
    vectors = _unit_vectors(len(ids), 1)
    _store(ids, vectors)
    index = LiveIndex()
    index.sync(force=True)
    fresh = _unit_vectors(1, 7)[0]
    _store([ids[3]], fresh[None])
    index.sync(force=True)
    assert len(index.index) == len(ids)
    assert index.search(fresh, 1)[0][0] == ids[3]
    assert ids[3] not in [k for k, _ in index.search(vectors[3], 3)]


def test_filtered_hits_are_the_exact_nearest_among_the_filtered_units(cast: Any) -> None:
    ids = _units(cast)
    vectors = _unit_vectors(len(ids), 2)
    _store(ids, vectors)
    reset_live_index()
    live_index()
    query = vectors[5] + 0.1 * _unit_vectors(1, 9)[0]
    query /= np.linalg.norm(query)
    filters = parse_unit_filters({"source": "planted/L0", "labeled": "1"})
    hits = semantic_hits(filters, query, 4)
    expected = [ids[i] for i in np.argsort(-(vectors @ query))[:4]]  # brute force by hand
    assert [h.unit_id for h in hits] == expected
    assert np.allclose([h.similarity for h in hits], np.sort(vectors @ query)[::-1][:4], atol=2e-3)


def test_a_unit_whose_last_label_is_deleted_leaves_the_index(cast: Any) -> None:
    from browser.labels.models import Label
    from browser.labels.services import label_delete
    from workers.pipeline.search import embed_pending

    data = plant(cast.owner)
    embed_pending()
    index = LiveIndex()
    index.sync(force=True)
    unit = data.distractors[5]  # "colours": no examples, no top token
    vector = np.frombuffer(bytes(UnitEmbedding.objects.get(unit=unit).vector), dtype="<f4")
    assert index.search(vector, 1)[0][0] == unit.pk
    label = Label.objects.get(unit=unit)
    label_delete(label=label, user=cast.owner, revision=label.revision)
    embed_pending()
    assert bytes(UnitEmbedding.objects.get(unit=unit).vector) == b""
    index.sync(force=True)
    assert unit.pk not in [k for k, _ in index.search(vector, 5)]
    assert snapshot_build() == len(data.targets) + len(data.twins) + len(data.distractors) - 1
