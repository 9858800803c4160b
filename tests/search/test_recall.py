"""The HNSW settings of ``browser.search.index`` find the exact 10 nearest (brute force, numpy) for
at least 95% of queries on a seeded clustered set shaped like MiniLM unit embeddings: one cone
(every pair at a positive cosine), clusters in a low-dimensional subspace (real unit texts have a
participation ratio near 50 of 384), and queries that sit between clusters, far from every vector,
as free-text queries do (``docs/design.md``, semantic search)."""

from __future__ import annotations

import numpy as np

from browser.search.index import DIM, new_index

N, CLUSTERS, SUBSPACE, QUERIES = 10_000, 200, 48, 100


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def clustered(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [N, DIM], queries [QUERIES, DIM]), unit length."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, SUBSPACE)))[0].T  # [SUBSPACE, DIM], orthonormal rows
    common = _unit(rng.normal(size=DIM))
    scale = np.linspace(1.0, 0.15, SUBSPACE)  # a decaying spectrum, as embeddings have
    centres = rng.normal(size=(CLUSTERS, SUBSPACE)) * scale
    member = rng.integers(0, CLUSTERS, N)
    within = rng.normal(size=(N, SUBSPACE)) * scale * 0.5
    vectors = _unit(0.8 * common + 0.25 * ((centres[member] + within) @ basis)
                    + rng.normal(0, 0.01, (N, DIM)))
    mixed = centres[rng.integers(0, CLUSTERS, (QUERIES, 3))].mean(1)
    queries = _unit(0.4 * common + 0.25 * (mixed @ basis) + rng.normal(0, 0.03, (QUERIES, DIM)))
    return vectors, queries


def test_clustered_set_looks_like_embeddings() -> None:
    vectors, queries = clustered(0)
    sample = vectors[:2000]
    sims = sample @ sample.T
    assert sims.mean() > 0.2  # one cone (random directions in 384 dimensions average 0)
    np.fill_diagonal(sims, -1)
    centred = sample - sample.mean(0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    participation = spectrum.sum() ** 2 / (spectrum ** 2).sum()
    assert 20 < participation < 60
    top1 = (queries @ vectors.T).max(1)
    assert np.median(top1) < np.median(sims.max(1)) - 0.05  # queries sit farther than units from each other


def test_recall_at_10_against_brute_force() -> None:
    vectors, queries = clustered(1)
    index = new_index()
    index.add(np.arange(N, dtype=np.uint64), vectors, threads=2)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = [len(set(index.search(q, 10).keys.tolist()) & set(exact[i].tolist())) / 10
              for i, q in enumerate(queries)]
    assert np.mean(recall) >= 0.95, np.mean(recall)
