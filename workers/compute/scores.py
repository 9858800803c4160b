"""Polysemanticity scores and neuron-feature comparison, as pure functions on tensors.

Every score here has a definition precise enough to compute by hand; the tests check each one
against a brute force or against the ground truth of a toy model of superposition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DUPLICATE_COSINE = 0.9
"""Two dictionary features whose decoder directions have cosine above this count as one."""
FPN_MIN_SHARE = 0.01
"""A feature counts toward features per neuron when it carries at least this share of the neuron's
|contribution| mass (so the count is at most 100); chosen on toy models (docs/design.md)."""
_TOKEN_MARKERS = "\u2581\u0120\u010a"
"""Word-start markers of SentencePiece (▁) and byte-level BPE (Ġ, Ċ), dropped by ``normalize``."""


# ---------------------------------------------------------------- top-token concentration


def top_token_concentration(tokens: Sequence[str], *, normalize: bool = False) -> tuple[float, str | None]:
    """Share of a unit's top examples whose max-activating token is the most common string.

    ``tokens`` holds each top example's max token (as displayed). Returns (share, that token);
    ties go to the token that appears first, i.e. on the higher-ranked example. With
    ``normalize``, word-start markers and surrounding whitespace are dropped and case folded, so
    " The" and "the" count as one. No examples: (0.0, None).
    """
    if not tokens:
        return 0.0, None
    keys = [_normal(t) for t in tokens] if normalize else list(tokens)
    token, count = Counter(keys).most_common(1)[0]
    return count / len(keys), token


def _normal(token: str) -> str:
    return token.strip().strip(_TOKEN_MARKERS).strip().casefold()


# ---------------------------------------------------------------- context-cluster polysemanticity


@dataclass(frozen=True)
class ClusterSplit:
    """The best weighted 2-means split of a unit's centred example embeddings."""

    score: float
    """1 - clarity, in [0, 2]: near 0 for one tight cluster, near 1 for two orthogonal ones."""
    clarity: float
    """Cosine similarity of the two cluster centres (1.0 when there is nothing to split)."""
    sizes: tuple[int, int]
    """Examples in each cluster."""
    labels: torch.Tensor
    """[N] cluster of each example (0 or 1)."""


def two_means(X: torch.Tensor, weights: torch.Tensor | None = None, *, restarts: int = 8, iters: int = 100,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's weighted 2-means on rows of X [N, d] (float64): (labels [N], centres [2, d]).

    Minimises sum_i w_i ||x_i - c_(label i)||^2; each centre is the weighted mean of its rows
    (``weights`` [N], non-negative with a positive sum; None: all 1). k-means++ seeding from a
    seeded generator (first centre drawn with probability ~ w, the second ~ w distance^2),
    ``restarts`` runs (iterated together), the lowest weighted within-cluster sum of squares kept
    (the first on ties): the result is a deterministic function of X, the weights and seed.
    """
    w = torch.ones(len(X), dtype=X.dtype) if weights is None else weights.to(X.dtype)
    if bool((w < 0).any()) or float(w.sum()) <= 0.0:
        raise ValueError("2-means weights must be non-negative with a positive sum")
    gen = torch.Generator().manual_seed(seed)
    labels, centres = _lloyd(X, w, _plus_plus(X, w, restarts, gen), iters)
    # ||x - c||^2 = ||x||^2 + (||c||^2 - 2 x.c), the second term as _distances gives it
    inertia = (w * ((X**2).sum(dim=1) + _distances(X, centres).gather(2, labels[..., None])[..., 0])).sum(dim=1)
    best = int(inertia.argmin())  # the first of equal minima
    return labels[best], centres[best]


def _plus_plus(X: torch.Tensor, w: torch.Tensor, restarts: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding of ``restarts`` runs for k = 2: [R, 2, d]. The first centre is drawn with
    prob. ~ w, the second ~ w distance^2 (the first again when every point sits on the first)."""
    first = torch.multinomial(w / w.sum(), restarts, replacement=True, generator=gen)  # [R]
    norms = (X**2).sum(dim=1)  # [N]
    d2 = w * (norms[first, None] + norms[None, :] - 2 * X[first] @ X.T).clamp_min(0.0)  # [R, N]
    spread = d2.sum(dim=1, keepdim=True) > 0
    d2 = torch.where(spread, d2, w)  # any draw will do: it is replaced by the first below
    second = torch.multinomial(d2 / d2.sum(dim=1, keepdim=True), 1, generator=gen)[:, 0]
    second = torch.where(spread[:, 0], second, first)
    return torch.stack([X[first], X[second]], dim=1)


def _lloyd(X: torch.Tensor, w: torch.Tensor, centres: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations of R runs at once from centres [R, 2, d]: (labels [R, N], centres [R, 2, d]).

    A run whose labels no longer change stays put, so iterating until all have converged gives
    each run's own fixed point. A centre that loses all its weight keeps its place.
    """
    labels = _distances(X, centres).argmin(dim=2)
    for _ in range(iters):
        member = torch.nn.functional.one_hot(labels, 2).to(X.dtype) * w[None, :, None]  # [R, N, 2]
        mass = member.sum(dim=1)[..., None]  # [R, 2, 1]
        centres = torch.where(mass > 0, member.transpose(1, 2) @ X / mass.clamp_min(1e-300), centres)
        new = _distances(X, centres).argmin(dim=2)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, centres


def _distances(X: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[R, N, 2]: ||x - c||^2 - ||x||^2 = ||c||^2 - 2 x.c for each run's two centres."""
    R, _, d = centres.shape
    dots = (X @ centres.reshape(R * 2, d).T).reshape(len(X), R, 2).transpose(0, 1)  # [N, R*2] -> [R, N, 2]
    return (centres**2).sum(dim=2)[:, None, :] - 2 * dots


def context_cluster_polysemanticity(
    embeddings: torch.Tensor, weights: torch.Tensor | None = None, *, common: torch.Tensor | None = None,
    restarts: int = 64, seed: int = 0
) -> ClusterSplit:
    """How far apart the two best clusters of a unit's example windows lie (SemanticLens style).

    ``embeddings`` [N, d] embeds each example window (a sentence embedding); ``weights`` [N] says
    how much each example counts (the unit's activation on it; None: all equal); ``common`` [d]
    is the corpus's common component (the mean embedding of random windows of the corpus; None:
    nothing removed). Definition:

    1. x_i = e_i - common, scaled to unit length;
    2. weighted 2-means (``two_means``, ``restarts`` k-means++ runs from ``seed``) splits the x_i
       into two clusters with centres c0, c1 (the weighted means of the unit rows, not
       renormalised);
    3. clarity = cos(c0, c1), and the score is 1 - clarity (0 when one cluster is empty).

    Why each step: sentence embeddings are anisotropic, every window of a corpus sharing a large
    common component, so without step 1's subtraction any two centres are similar (MiniLM on
    Shakespeare verse: cosine 0.65-0.77 for every unit, whatever its meanings). Once it is gone,
    examples about one thing share one offset from the corpus and two unrelated meanings give two
    offsets, so the centres of a split across meanings lie further apart than those of a split
    within one. The weights keep a unit's weakest examples (often tokens it barely fires on,
    unrelated to anything) from deciding the split. Real units are not tight clusters: on MiniLM
    layer-2 neurons, four that fire on one token ("[", "lord", "enter", "heart") score 0.72-1.00
    against a layer median of 1.12, so compare units scored on the same corpus rather than
    reading the value alone. Many splits of ~48 windows are
    nearly as good as the best, so the value moves with the seed (by 0.026 on average over those
    neurons with 64 restarts, 0.038 with 8; with 8, a planted two-meaning unit fell below one of
    its components for a few seeds, with 64 for none of 16). Fewer than two examples: score 0.
    """
    X = embeddings.to(torch.float64)
    if common is not None:
        X = X - common.to(torch.float64)
    X = torch.nn.functional.normalize(X, dim=1)
    if len(X) < 2:
        return ClusterSplit(0.0, 1.0, (len(X), 0), torch.zeros(len(X), dtype=torch.long))
    labels, centres = two_means(X, weights, restarts=restarts, seed=seed)
    clarity = float(torch.nn.functional.cosine_similarity(centres[0], centres[1], dim=0))
    sizes = (int((labels == 0).sum()), int((labels == 1).sum()))
    if min(sizes) == 0:
        clarity = 1.0
    return ClusterSplit(1.0 - clarity, clarity, sizes, labels)


# ---------------------------------------------------------------- features per neuron and back


def effective_number(weights: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the distribution w / sum(w) along the last axis: [..., K] -> [...].

    K equal weights give K; one non-zero weight gives 1. Weights must be non-negative; an
    all-zero row gives 0 (nothing carries it).
    """
    w = weights.to(torch.float64)
    total = w.sum(dim=-1, keepdim=True)
    q = w / total.clamp_min(1e-300)
    entropy = -torch.xlogy(q, q).sum(dim=-1)
    return torch.where(total[..., 0] > 0, entropy.exp(), torch.zeros((), dtype=torch.float64))


def neuron_contributions(feature_acts: torch.Tensor, W_dec: torch.Tensor, neuron: int) -> torch.Tensor:
    """What each dictionary feature adds to one neuron on each token: [T, F].

    ``feature_acts`` [T, F] are the features' activations on the tokens of the neuron's examples,
    ``W_dec`` [F, d] the decoder (row f is feature f's direction over the d neurons).
    """
    return feature_acts * W_dec[:, neuron]


def features_per_neuron_from_totals(totals: torch.Tensor, *, min_share: float = FPN_MIN_SHARE) -> torch.Tensor:
    """[..., F] each feature's total |contribution| to a neuron -> [...] features per neuron.

    The effective number (exp entropy) of the shares of the features that each carry at least
    ``min_share`` of the neuron's total |contribution| mass, renormalised among themselves. Bounded
    by 1 / ``min_share``; 0 when no feature reaches it (the mass is spread over noise).
    """
    w = totals.to(torch.float64)
    shares = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    return effective_number(torch.where(shares >= min_share, shares, torch.zeros((), dtype=torch.float64)))


def explained_share(totals: torch.Tensor, *, min_share: float = FPN_MIN_SHARE) -> torch.Tensor:
    """[..., F] -> [...]: the share of the neuron's |contribution| mass that the features counted
    by ``features_per_neuron_from_totals`` carry (how much of the neuron the count speaks for)."""
    w = totals.to(torch.float64)
    shares = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    return torch.where(shares >= min_share, shares, torch.zeros((), dtype=torch.float64)).sum(dim=-1)


def features_per_neuron(contributions: torch.Tensor, *, min_share: float = FPN_MIN_SHARE) -> float:
    """Features per neuron from its per-token contributions [T, F] (``neuron_contributions``):
    ``features_per_neuron_from_totals`` of their |contribution| summed over the tokens."""
    return float(features_per_neuron_from_totals(contributions.abs().sum(dim=0), min_share=min_share))


def features_per_neuron_interval(
    group_totals: torch.Tensor, *, min_share: float = FPN_MIN_SHARE, z: float = 1.96
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Delete-one-group jackknife over G disjoint groups of the neuron's tokens.

    ``group_totals`` [G, ..., F] holds each group's per-feature |contribution| totals. Returns
    (value on all tokens, low, high) [...]: value -/+ ``z`` jackknife standard errors, the low end
    clamped at 0. G < 2 gives low = high = value.
    """
    g = group_totals.shape[0]
    total = group_totals.sum(dim=0)
    value = features_per_neuron_from_totals(total, min_share=min_share)
    if g < 2:
        return value, value, value
    leave_out = features_per_neuron_from_totals(total[None] - group_totals, min_share=min_share)  # [G, ...]
    se = ((g - 1) / g * (leave_out - leave_out.mean(dim=0)).pow(2).sum(dim=0)).sqrt()
    return value, (value - z * se).clamp_min(0.0), value + z * se


def top_contributors(contributions: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k features with the largest share of a neuron's total |contribution| [T, F], with shares."""
    totals = contributions.abs().to(torch.float64).sum(dim=0)
    shares = totals / totals.sum().clamp_min(1e-300)
    values, indices = shares.topk(min(k, len(shares)))
    return [(int(i), float(v)) for i, v in zip(indices, values, strict=True) if v > 0]


def neurons_per_feature(W_dec: torch.Tensor) -> torch.Tensor:
    """[F, d] -> [F]: exp(entropy) of each decoder row's L1 shares over the d neurons."""
    return effective_number(W_dec.abs())


def decoder_alignment(W_dec: torch.Tensor) -> torch.Tensor:
    """[F, d] -> [F, d]: the share of feature f's decoder L1 norm that falls on neuron j."""
    a = W_dec.abs().to(torch.float64)
    return a / a.sum(dim=1, keepdim=True).clamp_min(1e-300)


def top_context_overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Jaccard overlap of two units' top context ids (0 when both are empty)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 0.0


# ---------------------------------------------------------------- layer-level superposition


def distinct_live_features(
    W_dec: torch.Tensor, live: torch.Tensor, *, threshold: float = DUPLICATE_COSINE, chunk: int = 2048
) -> torch.Tensor:
    """[F] mask of features that are live and not a near-duplicate of an earlier live feature.

    ``live`` [F] marks features that fired at all (not dead). Feature f is a near-duplicate when
    its decoder direction has cosine above ``threshold`` with some live feature g < f. Costs
    O(L^2 d) for L live features, in chunks of ``chunk`` rows.
    """
    idx = live.nonzero().flatten()
    W = torch.nn.functional.normalize(W_dec[idx].to(torch.float32), dim=1)  # [L, d]
    duplicate = torch.zeros(len(idx), dtype=torch.bool)
    for start in range(0, len(idx), chunk):
        stop = min(start + chunk, len(idx))
        cos = W[start:stop] @ W[:stop].T  # [c, stop]
        earlier = torch.arange(stop)[None, :] < torch.arange(start, stop)[:, None]  # g < f
        duplicate[start:stop] = (cos.masked_fill(~earlier, -2.0) > threshold).any(dim=1)
    out = torch.zeros(len(W_dec), dtype=torch.bool)
    out[idx[~duplicate]] = True
    return out


def layer_superposition(W_dec: torch.Tensor, live: torch.Tensor, *, threshold: float = DUPLICATE_COSINE) -> float:
    """Live, distinct dictionary features per dimension: count / d for W_dec [F, d].

    Above 1 means the layer stores more features than it has dimensions.
    """
    return int(distinct_live_features(W_dec, live, threshold=threshold).sum()) / W_dec.shape[1]
