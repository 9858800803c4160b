"""Neuron-feature comparison tables and per-neuron feature mass, as pure tensor functions.

The score job (``workers/pipeline/scores.py``) feeds these from a run's examples and a forward
pass; the definitions of the scores themselves live in ``workers/compute/scores.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse

from workers.compute.scores import features_per_neuron_from_totals


def stable_top_k(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest entries, highest first, ties to the lower column: (values, columns)."""
    k = min(k, matrix.shape[1])
    order = torch.sort(matrix, dim=1, descending=True, stable=True).indices[:, :k]
    return matrix.gather(1, order), order


def jaccard_matrix(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> torch.Tensor:
    """[len(a), len(b)] Jaccard overlap |a_i & b_j| / |a_i | b_j| of two families of id sets
    (0 where both are empty). Intersections are one sparse product of the two families' 0/1
    membership matrices (ids as columns): exact integer counts, and work only where sets share ids."""
    columns: dict[int, int] = {}
    A, B = (_membership(family, columns) for family in (a, b))
    A.resize((len(a), len(columns)))
    B.resize((len(b), len(columns)))
    inter = torch.from_numpy((A @ B.T).toarray().astype(np.float64))
    size_a = torch.from_numpy(np.asarray(A.sum(axis=1), dtype=np.float64)[:, 0])
    size_b = torch.from_numpy(np.asarray(B.sum(axis=1), dtype=np.float64)[:, 0])
    union = size_a[:, None] + size_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros((), dtype=torch.float64))


def _membership(family: Sequence[Sequence[int]], columns: dict[int, int]) -> sparse.csr_matrix:
    """[len(family), ids seen so far] 0/1 (int32) rows of the sets, numbering new ids in ``columns``."""
    rows, cols = [], []
    for i, members in enumerate(family):
        for x in set(members):
            rows.append(i)
            cols.append(columns.setdefault(x, len(columns)))
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(family), len(columns)))


def carried_mass(member: torch.Tensor, feature_acts: torch.Tensor) -> torch.Tensor:
    """[N, T] bool x [T, F] -> [N, F] float64: per neuron, the sum of |feature activation| over the
    tokens that count for it (its example tokens on which it fires).

    Summed from the activations' non-zeros only, pair by pair: each (neuron, member token) adds the
    token's non-zero latents (32 of 4,096 for a TopK SAE, so the dense product did a hundred times
    the work). ``index_add_`` adds in order, so the result does not depend on threads."""
    N, (T, F) = member.shape[0], feature_acts.shape
    tok, feat = feature_acts.nonzero(as_tuple=True)  # row-major: grouped by token
    values = feature_acts[tok, feat].abs().double()
    per_token = torch.bincount(tok, minlength=T)
    token_start = per_token.cumsum(0) - per_token
    neuron, token = member.nonzero(as_tuple=True)  # [P] pairs
    reps = per_token[token]
    pair = torch.repeat_interleave(torch.arange(len(token), device=member.device), reps)  # [E]
    within = torch.arange(len(pair), device=member.device) - (reps.cumsum(0) - reps)[pair]
    entry = token_start[token[pair]] + within  # [E] the pair's token's non-zeros, one by one
    out = torch.zeros(N * F, dtype=torch.float64, device=feature_acts.device)
    out.index_add_(0, neuron[pair] * F + feat[entry], values[entry])
    return out.view(N, F)


def features_per_neuron_from_mass(mass: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """[N, F] mass and W_dec [F, N] -> [N] features per neuron (``scores.features_per_neuron_from_totals``).

    sum_t |a_f(t) W_dec[f, n]| = |W_dec[f, n]| sum_t |a_f(t)|, so this equals
    ``scores.features_per_neuron(scores.neuron_contributions(acts, W_dec, n))`` over the same tokens.
    """
    return features_per_neuron_from_totals(neuron_shares_mass(mass, W_dec))


def neuron_shares_mass(mass: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """[..., N, F]: the total |contribution| of each feature to each neuron (a leading group axis,
    as the score job keeps for its jackknife, passes through)."""
    return mass.to(torch.float64) * W_dec.abs().T.to(torch.float64)
