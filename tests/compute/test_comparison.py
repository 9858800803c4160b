"""Neuron x feature comparison helpers against brute force."""

from __future__ import annotations

import torch

from workers.compute.comparison import carried_mass, jaccard_matrix


def test_carried_mass_equals_a_sum_over_tokens() -> None:
    """Per neuron and feature: the sum of |activation| over the neuron's member tokens, written as
    loops, for sparse (TopK-like), dense and all-zero activations."""
    gen = torch.Generator().manual_seed(0)
    N, T, F = 7, 30, 11
    member = torch.rand(N, T, generator=gen) < 0.4
    dense = torch.randn(T, F, generator=gen)
    sparse = dense.masked_fill(torch.rand(T, F, generator=gen) < 0.8, 0.0)
    for acts in (sparse, dense, torch.zeros(T, F)):
        want = torch.zeros(N, F, dtype=torch.float64)
        for n in range(N):
            for t in range(T):
                if member[n, t]:
                    for f in range(F):
                        want[n, f] += abs(float(acts[t, f]))
        got = carried_mass(member, acts)
        assert got.dtype == torch.float64 and got.shape == (N, F)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_jaccard_matrix_equals_set_arithmetic() -> None:
    """Against Python sets, with repeated ids, empty sets on both sides and ids only one side holds."""
    gen = torch.Generator().manual_seed(1)
    a = [torch.randint(0, 12, (int(n),), generator=gen).tolist() for n in torch.randint(0, 6, (9,), generator=gen)]
    b = [torch.randint(5, 20, (int(n),), generator=gen).tolist() for n in torch.randint(0, 6, (7,), generator=gen)]
    a[0], b[1] = [], []
    got = jaccard_matrix(a, b)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            union = set(x) | set(y)
            assert float(got[i, j]) == (len(set(x) & set(y)) / len(union) if union else 0.0)
    assert jaccard_matrix([], b).shape == (0, 7) and jaccard_matrix([[]], [[]]).tolist() == [[0.0]]
