"""``context_cluster_polysemanticity`` for many units at once: the same definition and the same
random draws as the per-unit function in ``workers.compute.scores``, computed in batches.

The per-unit function spends its time in Lloyd's iterations on [N, d] rows (N <= 48 example
windows, d = 384), one unit after another: each iteration is two small [R*2, d] x [d, N]
products per unit, and the interpreter's per-operation cost on top. Here:

- the iterations run on the Gram matrix G = X X^T [N, N] instead of the rows: a centre is a
  weighted mean of rows, c = sum_i a_i x_i, so x_n . c = (a^T G)_n and ||c||^2 = a^T G a, and a
  centre is kept as its coefficients a [N] (N < d: a fifth of the work per iteration);
- units are padded to a common N with zero-weight rows and iterated together, a unit leaving the
  batch once all its restarts have converged (so a slow unit costs only its own iterations);
- the k-means++ draws are made by ``torch.multinomial`` on each unit's own generator seeded with
  ``seed``, in the per-unit function's order, so every unit gets the same seeds as there.

The result equals the per-unit function's up to float rounding (same labels; the score within
1e-9 on the tests): the only difference is the order of the sums in the distances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.compute.scores import ClusterSplit

CHUNK = 256
"""Units per batch (bounds memory: the centres' coefficients are [CHUNK, R, 2, N] float64)."""


def context_cluster_polysemanticity_many(
    embeddings: Sequence[torch.Tensor], weights: Sequence[torch.Tensor | None], *, common: torch.Tensor | None = None,
    restarts: int = 64, seed: int = 0, iters: int = 100, chunk: int = CHUNK,
) -> list[ClusterSplit]:
    """``scores.context_cluster_polysemanticity(embeddings[i], weights[i], common=common,
    restarts=restarts, seed=seed)`` for every i, in order."""
    if len(embeddings) != len(weights):
        raise ValueError("one weight vector (or None) per unit")
    out: list[ClusterSplit | None] = [None] * len(embeddings)
    rows: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for i, (e, w) in enumerate(zip(embeddings, weights, strict=True)):
        X = e.to(torch.float64)
        if common is not None:
            X = X - common.to(torch.float64)
        X = torch.nn.functional.normalize(X, dim=1)
        if len(X) < 2:
            out[i] = ClusterSplit(0.0, 1.0, (len(X), 0), torch.zeros(len(X), dtype=torch.long))
            continue
        wu = torch.ones(len(X), dtype=X.dtype) if w is None else w.to(X.dtype)
        if bool((wu < 0).any()) or float(wu.sum()) <= 0.0:
            raise ValueError("2-means weights must be non-negative with a positive sum")
        rows.append((i, X, wu))
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        for (i, _, _), split in zip(part, _batch([X for _, X, _ in part], [w for _, _, w in part], restarts, seed,
                                                 iters), strict=True):
            out[i] = split
    return [s for s in out if s is not None]


def _batch(Xs: list[torch.Tensor], ws: list[torch.Tensor], restarts: int, seed: int, iters: int) -> list[ClusterSplit]:
    U, n = len(Xs), max(len(X) for X in Xs)
    d = Xs[0].shape[1]
    X = torch.zeros(U, n, d, dtype=torch.float64)
    w = torch.zeros(U, n, dtype=torch.float64)
    valid = torch.zeros(U, n, dtype=torch.bool)
    for u, (Xu, wu) in enumerate(zip(Xs, ws, strict=True)):
        X[u, :len(Xu)], w[u, :len(Xu)], valid[u, :len(Xu)] = Xu, wu, True
    G = X @ X.transpose(1, 2)  # [U, n, n]
    norms = G.diagonal(dim1=1, dim2=2)  # [U, n]
    coef = _plus_plus(G, norms, w, [len(Xu) for Xu in Xs], restarts, seed)  # [U, R, 2, n]
    labels, coef = _lloyd(G, w, valid, coef, iters)
    dist = _distances(G, coef)  # [U, R, 2, n]
    inertia = (w[:, None, :] * (norms[:, None, :] + dist.gather(2, labels[:, :, None, :])[:, :, 0, :])).sum(dim=2)
    best = inertia.argmin(dim=1)  # [U]: the first of equal minima
    out = []
    for u, Xu in enumerate(Xs):
        lab = labels[u, best[u], :len(Xu)]
        centres = coef[u, best[u], :, :len(Xu)] @ Xu  # [2, d]
        clarity = float(torch.nn.functional.cosine_similarity(centres[0], centres[1], dim=0))
        sizes = (int((lab == 0).sum()), int((lab == 1).sum()))
        if min(sizes) == 0:
            clarity = 1.0
        out.append(ClusterSplit(1.0 - clarity, clarity, sizes, lab.clone()))
    return out


def _plus_plus(G: torch.Tensor, norms: torch.Tensor, w: torch.Tensor, sizes: list[int], restarts: int,
               seed: int) -> torch.Tensor:
    """k-means++ seeding as ``scores._plus_plus`` draws it (each unit's generator seeded with
    ``seed``; the first centre ~ w, the second ~ w distance^2), as one-hot coefficients [U, R, 2, n]."""
    U, n = w.shape
    gens = [torch.Generator().manual_seed(seed) for _ in range(U)]
    first = torch.stack([torch.multinomial(w[u, :m] / w[u, :m].sum(), restarts, replacement=True, generator=gens[u])
                         for u, m in enumerate(sizes)])  # [U, R]
    at = torch.arange(U)[:, None]
    d2 = w[:, None, :] * (norms[at, first][..., None] + norms[:, None, :] - 2 * G[at, first]).clamp_min(0.0)  # [U, R, n]
    spread = d2.sum(dim=2, keepdim=True) > 0
    d2 = torch.where(spread, d2, w[:, None, :])
    second = torch.stack([torch.multinomial(d2[u, :, :m] / d2[u, :, :m].sum(dim=1, keepdim=True), 1,
                                            generator=gens[u])[:, 0] for u, m in enumerate(sizes)])
    second = torch.where(spread[..., 0], second, first)
    coef = torch.zeros(U, restarts, 2, n, dtype=torch.float64)
    coef.scatter_(3, torch.stack([first, second], dim=2)[..., None], 1.0)
    return coef


def _distances(G: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """[U, R, 2, n]: ||x_n - c_k||^2 - ||x_n||^2 = ||c_k||^2 - 2 x_n . c_k from the Gram matrix."""
    U, R, _, n = coef.shape
    dots = (coef.reshape(U, R * 2, n) @ G).reshape(U, R, 2, n)  # x_n . c_k
    return (coef * dots).sum(dim=3, keepdim=True) - 2 * dots


def _nearest(dist: torch.Tensor) -> torch.Tensor:
    """[U, R, n] labels: ``dist.argmin(dim=2)`` (0 on ties) without the slow strided reduction."""
    return (dist[:, :, 1, :] < dist[:, :, 0, :]).long()


def _lloyd(G: torch.Tensor, w: torch.Tensor, valid: torch.Tensor, coef: torch.Tensor,
           iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations as ``scores._lloyd`` runs them, per unit until all its restarts keep
    their labels (or ``iters``); padded rows weigh nothing and keep label 0."""
    labels = _nearest(_distances(G, coef)) * valid[:, None, :]  # [U, R, n]
    active = torch.arange(len(G))
    for _ in range(iters):
        if len(active) == 0:
            break
        g, wa, lab, c = G[active], w[active], labels[active], coef[active]
        member = torch.nn.functional.one_hot(lab, 2).to(torch.float64) * wa[:, None, :, None]  # [A, R, n, 2]
        member = member.transpose(2, 3)  # [A, R, 2, n]
        mass = member.sum(dim=3, keepdim=True)  # [A, R, 2, 1]
        c = torch.where(mass > 0, member / mass.clamp_min(1e-300), c)
        new = _nearest(_distances(g, c)) * valid[active][:, None, :]
        coef[active] = c
        moved = (new != lab).flatten(1).any(dim=1)
        labels[active] = torch.where(moved[:, None, None], new, lab)
        active = active[moved]
    return labels, coef
