"""How much ``context_cluster_polysemanticity`` moves with its seed and its sample, and what it reads
for a unit with no meaning at all (random windows of the corpus), so a reader can tell a score from
noise.

- seed spread: the score with ``seeds`` different k-means seeds on the same examples (min, max);
- sample spread: the score on ``resamples`` bootstrap resamples of the unit's examples (drawn with
  replacement, weights kept), its 5th and 95th percentiles and standard deviation;
- baseline: the score of ``draws`` random units, each ``n`` windows drawn from a pool of random
  windows of the corpus with equal weights: its mean and 5th / 95th percentiles. A unit whose score
  lies inside that band cannot be told from a unit that responds to nothing in particular.
"""

from __future__ import annotations

from typing import Any

import torch

from workers.compute.scores import context_cluster_polysemanticity

RESTARTS = 16
"""k-means restarts per score here (the score job uses 64; the spread is what is measured, so
fewer restarts would only widen it: the seed spread reported is an upper bound for the job's)."""


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def score_spread(embeddings: torch.Tensor, weights: torch.Tensor | None, common: torch.Tensor | None, *,
                 seeds: int = 5, resamples: int = 20, seed: int = 0) -> dict[str, Any]:
    """[N, d] one unit's example embeddings -> its score and how far seed and sample move it."""
    value = context_cluster_polysemanticity(embeddings, weights, common=common, restarts=RESTARTS, seed=seed).score
    by_seed = [context_cluster_polysemanticity(embeddings, weights, common=common, restarts=RESTARTS,
                                               seed=seed + s).score for s in range(seeds)]
    g = torch.Generator().manual_seed(seed)
    by_sample = []
    for _ in range(resamples):
        pick = torch.randint(len(embeddings), (len(embeddings),), generator=g)
        w = weights[pick] if weights is not None else None
        by_sample.append(context_cluster_polysemanticity(embeddings[pick], w, common=common, restarts=RESTARTS,
                                                         seed=seed).score)
    std = float(torch.tensor(by_sample, dtype=torch.float64).std()) if len(by_sample) > 1 else 0.0
    return {"value": value, "seed_min": min(by_seed), "seed_max": max(by_seed),
            "sample_p5": _quantile(by_sample, 0.05), "sample_p95": _quantile(by_sample, 0.95), "sample_std": std,
            "examples": len(embeddings)}


def random_baseline(pool: torch.Tensor, n: int, common: torch.Tensor | None, *, draws: int = 32,
                    seed: int = 0) -> dict[str, Any]:
    """The score of ``draws`` random units of ``n`` windows each, drawn without replacement from
    ``pool`` [P, d] (random windows of the corpus), equal weights."""
    if not 2 <= n <= len(pool):
        raise ValueError(f"a random unit needs 2..{len(pool)} windows (got {n})")
    g = torch.Generator().manual_seed(seed)
    values = [context_cluster_polysemanticity(pool[torch.randperm(len(pool), generator=g)[:n]], None,
                                              common=common, restarts=RESTARTS, seed=seed).score
              for _ in range(draws)]
    return {"mean": sum(values) / len(values), "p5": _quantile(values, 0.05), "p95": _quantile(values, 0.95),
            "n": n, "draws": draws}
