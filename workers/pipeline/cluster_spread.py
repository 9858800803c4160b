"""Seed and sample spread of ``context_cluster_polysemanticity``, and its random-unit baseline, for a
sample of one source's scored units of a run (``manage.py cluster_spread``).

Each sampled unit's examples are chosen as the score job chooses them (its first 24 top and 24
interval examples, weighted by the unit's max activation in each), their windows (8 tokens each
side of the max token) embedded with MiniLM; the common component is the mean of a pool of random
windows of the corpus, which also feeds the random units of the baseline. Stored as one
``context_cluster_spread`` score per sampled unit (value: the bootstrap standard deviation; details:
the seed and sample ranges, the job's own score and the source's baseline).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.db import transaction

from browser.catalog.models import Score, Source
from browser.catalog.services import scores_replace
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.runs.models import Run
from workers.compute import loading
from workers.compute.cluster_spread import random_baseline, score_spread
from workers.compute.embed import SentenceEmbedder
from workers.pipeline.scores.windows import common_windows, window_text

NAME, VERSION = "context_cluster_spread", 1
CLUSTERS = "context_cluster_polysemanticity"
TOP = INTERVAL = 24
MIN_EXAMPLES = 6
MAX_UNITS = 512


class SpreadInputError(ValueError):
    """Nothing to measure (no such run or source, or no cluster scores yet)."""


def _examples(run: Run, unit_id: int) -> list[tuple[int, int, float]]:
    """(context id, max position, max value) of the unit's first TOP top and INTERVAL interval examples."""
    rows = Example.objects.filter(run=run, unit_id=unit_id).order_by("kind", "bucket", "rank")
    out = [r for r in rows.filter(kind=Example.Kind.TOP).values_list("context_id", "max_pos", "max_value")[:TOP]]
    out += list(rows.filter(kind=Example.Kind.INTERVAL).values_list("context_id", "max_pos", "max_value")[:INTERVAL])
    return out


def cluster_spread_compute(*, run_id: int, source_name: str, units: int = 48, seeds: int = 5, resamples: int = 20,
                           draws: int = 32, pool: int = 512, seed: int = 0) -> dict[str, Any]:
    """Measure and store the spread of a sample of ``units`` scored units, and the baseline."""
    run = Run.objects.select_related("model", "corpus", "corpus__tokenizer").filter(pk=run_id).first()
    source = Source.objects.filter(model=run.model, name=source_name).first() if run else None
    if run is None or source is None:
        raise SpreadInputError(f"no run #{run_id} with a source named {source_name!r}")
    if not 1 <= units <= MAX_UNITS:
        raise SpreadInputError(f"units must be 1..{MAX_UNITS}")
    scored = dict(Score.objects.filter(run=run, unit__source=source, name=CLUSTERS, label__isnull=True)
                  .values_list("unit_id", "value"))
    if not scored:
        raise SpreadInputError(f"run #{run_id} has no {CLUSTERS} scores for {source_name}: run the score job first")
    g = torch.Generator().manual_seed(seed)
    ids = sorted(scored)
    chosen = [ids[i] for i in sorted(torch.randperm(len(ids), generator=g)[:units].tolist())]
    examples = {u: ex for u in chosen if len(ex := _examples(run, u)) >= MIN_EXAMPLES}
    contexts = {c for ex in examples.values() for c, _, _ in ex}
    tokens = {pk: decode_tokens(bytes(t)) for pk, t in Context.objects.filter(pk__in=contexts).values_list("pk", "tokens")}
    tokenizer = loading.load_tokenizer(run.model.location, Path(settings.CACHE_DIR))
    embedder = SentenceEmbedder(Path(settings.CACHE_DIR), "cpu")
    pool_vectors = embedder.embed(common_windows(run, tokenizer, n=pool, seed=seed))
    common = pool_vectors.mean(dim=0)
    spreads = {}
    for u, ex in examples.items():
        vectors = embedder.embed([window_text(tokenizer, tokens[c], p) for c, p, _ in ex])
        weights = torch.tensor([v for _, _, v in ex], dtype=torch.float64)
        spreads[u] = score_spread(vectors, weights, common, seeds=seeds, resamples=resamples, seed=seed)
    n = int(statistics.median(s["examples"] for s in spreads.values())) if spreads else MIN_EXAMPLES
    baseline = random_baseline(pool_vectors, min(n, len(pool_vectors)), common, draws=draws, seed=seed)
    with transaction.atomic():  # every scored unit's old spread goes, a sample of another size included
        scores_replace(run=run, unit_ids=ids, names=(NAME,), version=VERSION, rows=(
            (u, NAME, s["sample_std"], {**s, "score": scored[u], "baseline": baseline}) for u, s in spreads.items()))
    return {"units": len(spreads), "baseline": baseline,
            "median_sample_std": statistics.median(s["sample_std"] for s in spreads.values()) if spreads else None,
            "median_seed_range": statistics.median(s["seed_max"] - s["seed_min"] for s in spreads.values())
            if spreads else None}
