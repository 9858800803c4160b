"""Polysemanticity scores and neuron-feature comparison, as pure functions on tensors.

Every score here has a definition precise enough to compute by hand; the tests check each one
against a brute force or against the ground truth of a toy model of superposition.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DUPLICATE_COSINE = 0.9
"""Two dictionary features whose decoder directions have cosine above this count as one."""
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
    """The best 2-means split of a unit's example embeddings."""

    score: float
    """1 - clarity, in [0, 2]: near 0 for one tight cluster, near 1 for two orthogonal ones."""
    clarity: float
    """Cosine similarity of the two cluster centres (1.0 when there is nothing to split)."""
    sizes: tuple[int, int]
    """Examples in each cluster."""
    labels: torch.Tensor
    """[N] cluster of each example (0 or 1)."""


def two_means(X: torch.Tensor, *, restarts: int = 8, iters: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's 2-means on rows of X [N, d] (float64): (labels [N], centres [2, d]).

    k-means++ seeding from a seeded generator, ``restarts`` runs, the lowest within-cluster sum of
    squares kept (the first on ties): the result is a deterministic function of X and seed.
    """
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        labels, centres = _lloyd(X, _plus_plus(X, gen), iters)
        inertia = float(((X - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centres)
    assert best is not None
    return best[1], best[2]


def _plus_plus(X: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding for k = 2: a uniform first centre, the second drawn with prob. ~ distance^2."""
    first = X[torch.randint(len(X), (1,), generator=gen)]  # [1, d]
    d2 = ((X - first) ** 2).sum(dim=1)
    if float(d2.sum()) == 0.0:
        return torch.cat([first, first])
    second = X[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]
    return torch.cat([first, second])


def _lloyd(X: torch.Tensor, centres: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cdist(X, centres).argmin(dim=1)
    for _ in range(iters):
        centres = torch.stack([X[labels == c].mean(dim=0) if (labels == c).any() else centres[c] for c in (0, 1)])
        new = torch.cdist(X, centres).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, centres


def context_cluster_polysemanticity(
    embeddings: torch.Tensor, *, restarts: int = 8, seed: int = 0
) -> ClusterSplit:
    """How far apart the two best clusters of a unit's example windows lie (SemanticLens style).

    ``embeddings`` [N, d] embeds each example window (e.g. a sentence embedding). Definition:

    1. each row is scaled to unit length (embeddings compare by cosine);
    2. 2-means (``two_means``) splits the rows into two clusters with centres c0, c1 (the means
       of the unit rows, not renormalised);
    3. clarity = cos(c0, c1), and the score is 1 - clarity.

    Examples about one thing form one tight cluster: any split leaves two nearly parallel
    centres, clarity near 1, score near 0. Two unrelated meanings give two centres as far apart
    as the meanings, score near 1 for orthogonal ones (up to 2 for opposite ones). Fewer than two
    distinct examples: score 0.
    """
    X = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=1)
    if len(X) < 2:
        return ClusterSplit(0.0, 1.0, (len(X), 0), torch.zeros(len(X), dtype=torch.long))
    labels, centres = two_means(X, restarts=restarts, seed=seed)
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


def features_per_neuron(contributions: torch.Tensor) -> float:
    """The effective number of features that carry a neuron: exp(entropy) of the shares of the
    total |contribution| ([T, F] summed over tokens) each feature makes."""
    return float(effective_number(contributions.abs().sum(dim=0)))


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


# ---------------------------------------------------------------- streaming correlation


# Below this share of non-zero entries in y (SAE features: k of d_sae), the cross sums are
# computed from y's non-zeros only: T*k*n_x multiply-adds instead of T*n_y*n_x.
SPARSE_BELOW = 0.05


def _cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x.T @ y ([n_x, n_y]) for float64 x [T, n_x], y [T, n_y]."""
    if y.numel() and int(torch.count_nonzero(y)) < SPARSE_BELOW * y.numel():
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is exact
            warnings.simplefilter("ignore", UserWarning)
            sparse = y.T.contiguous().to_sparse_csr()  # [n_y, T]
            return (sparse @ x).T  # [n_y, T] @ [T, n_x] -> [n_x, n_y]
    return x.T @ y  # [n_x, T] @ [T, n_y]


class CorrelationAccumulator:
    """Pearson correlation between every x (neuron) and every y (feature), from running sums.

    Keeps n, sum x, sum y, sum x^2, sum y^2 and sum xy ([n_x, n_y]) in float64; shards merge by
    adding their sums, which agrees with one pass up to float64 rounding (the inputs are float32,
    so each product is exact in float64).
    """

    def __init__(self, n_x: int, n_y: int) -> None:
        self.n = 0
        self.sx = torch.zeros(n_x, dtype=torch.float64)
        self.sy = torch.zeros(n_y, dtype=torch.float64)
        self.sxx = torch.zeros(n_x, dtype=torch.float64)
        self.syy = torch.zeros(n_y, dtype=torch.float64)
        self.sxy = torch.zeros(n_x, n_y, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add T rows: x [T, n_x], y [T, n_y] (same tokens)."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y need the same rows (got {x.shape[0]} and {y.shape[0]})")
        x, y = x.to(torch.float64), y.to(torch.float64)
        self.n += x.shape[0]
        self.sx += x.sum(dim=0)
        self.sy += y.sum(dim=0)
        self.sxx += (x * x).sum(dim=0)
        self.syy += (y * y).sum(dim=0)
        self.sxy += _cross(x, y)


    def merge(self, other: CorrelationAccumulator) -> None:
        """Add another shard's sums to these."""
        if self.sxy.shape != other.sxy.shape:
            raise ValueError(f"cannot merge {tuple(other.sxy.shape)} sums into {tuple(self.sxy.shape)}")
        self.n += other.n
        for name in ("sx", "sy", "sxx", "syy", "sxy"):
            getattr(self, name).add_(getattr(other, name))

    def state(self) -> dict[str, torch.Tensor]:
        """The sums as tensors (for a safetensors blob)."""
        return {"n": torch.tensor([self.n], dtype=torch.int64), "sx": self.sx, "sy": self.sy,
                "sxx": self.sxx, "syy": self.syy, "sxy": self.sxy}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CorrelationAccumulator:
        acc = cls(len(state["sx"]), len(state["sy"]))
        acc.n = int(state["n"][0])
        for name in ("sx", "sy", "sxx", "syy", "sxy"):
            setattr(acc, name, state[name].to(torch.float64).clone())
        return acc

    def correlation(self) -> torch.Tensor:
        """[n_x, n_y] Pearson r; 0 where x or y is constant (or no rows were seen)."""
        n = max(self.n, 1)
        cov = self.sxy - torch.outer(self.sx, self.sy) / n
        var_x = (self.sxx - self.sx**2 / n).clamp_min(0.0)
        var_y = (self.syy - self.sy**2 / n).clamp_min(0.0)
        denom = torch.outer(var_x, var_y).sqrt()
        # A relative floor: a variance that is float64 rounding of a constant must count as zero.
        floor_x = 1e-12 * self.sxx.clamp_min(1e-300)
        floor_y = 1e-12 * self.syy.clamp_min(1e-300)
        ok = (var_x > floor_x)[:, None] & (var_y > floor_y)[None, :]
        return torch.where(ok, cov / denom.clamp_min(1e-300), torch.zeros((), dtype=torch.float64)).clamp(-1.0, 1.0)

    def top_k(self, k: int, *, by_abs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's k most correlated columns: (r [n_x, k], column indices [n_x, k]).

        Ordered by r (or |r| with ``by_abs``), highest first; ties go to the lower index.
        """
        r = self.correlation()
        key = r.abs() if by_abs else r
        k = min(k, r.shape[1])
        # A stable descending sort gives lower indices first on ties; topk does not promise that.
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
        return r.gather(1, order), order

