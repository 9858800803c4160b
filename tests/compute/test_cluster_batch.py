"""The batched context-cluster score equals the per-unit one (``scores.context_cluster_polysemanticity``)."""

from __future__ import annotations

import pytest
import torch

from workers.compute import scores
from workers.compute.cluster_batch import context_cluster_polysemanticity_many


def _units(n_units: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor]:
    """Units of 2 to 48 windows drawn around 1 to 3 meanings, on top of a large common component;
    some with zero weights on a third of their windows, some unweighted."""
    gen = torch.Generator().manual_seed(seed)
    d = 384
    common = torch.randn(d, generator=gen)
    embeddings: list[torch.Tensor] = []
    weights: list[torch.Tensor | None] = []
    for u in range(n_units):
        n = int(torch.randint(2, 49, (1,), generator=gen))
        k = int(torch.randint(1, 4, (1,), generator=gen))
        meanings = torch.randn(k, d, generator=gen)
        e = meanings[torch.randint(k, (n,), generator=gen)] + 0.8 * torch.randn(n, d, generator=gen) + 3 * common
        w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
        if u % 7 == 0:
            w[: n // 3] = 0.0
        embeddings.append(e)
        weights.append(None if u % 5 == 0 else w)
    return embeddings, weights, common


def test_batched_clusters_equal_the_per_unit_score() -> None:
    embeddings, weights, common = _units(120, seed=3)
    # a chunk smaller than the units: several batches, each padded to its own longest unit
    got = context_cluster_polysemanticity_many(embeddings, weights, common=common, chunk=50)
    swapped = 0
    for e, w, split in zip(embeddings, weights, got, strict=True):
        want = scores.context_cluster_polysemanticity(e, w, common=common)
        assert split.score == pytest.approx(want.score, abs=1e-12)
        assert split.clarity == pytest.approx(want.clarity, abs=1e-12)
        # which cluster is called 0 is up to float rounding (restarts reaching one split with the
        # two clusters named the other way round have equal inertia): the split itself is the same
        assert sorted(split.sizes) == sorted(want.sizes)
        assert torch.equal(split.labels, want.labels) or torch.equal(split.labels, 1 - want.labels)
        swapped += not torch.equal(split.labels, want.labels)
    assert swapped < len(got) // 2


def test_batched_clusters_degenerate_units() -> None:
    one, same = torch.ones(1, 2), torch.ones(6, 2)
    two = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = context_cluster_polysemanticity_many([one, same, two], [None, None, torch.tensor([1.0, 2.0, 1.0, 2.0])])
    assert got[0].score == 0.0 and got[0].sizes == (1, 0)
    assert got[1].score == pytest.approx(0.0, abs=1e-12)
    assert got[2].score == pytest.approx(1.0) and sorted(got[2].sizes) == [2, 2]
    with pytest.raises(ValueError):
        context_cluster_polysemanticity_many([two], [torch.tensor([-1.0, 1.0, 1.0, 1.0])])
    assert context_cluster_polysemanticity_many([], []) == []
