"""`bench search`: semantic search at scale.

- ``indexing_units_per_s``: the worker's embedding of unit texts (MiniLM, ``SentenceEmbedder``) on
  windows of the fixture corpus, the way ``workers.pipeline.search`` embeds a unit's text;
- ``index_add_per_s``: vectors per second added to the usearch HNSW index (``browser.search.index``
  settings, ``--threads`` threads);
- ``query_embed_p50_ms`` / ``_p95_ms``: the web side's numpy MiniLM on short queries (one thread);
- ``ann_p50_ms`` / ``ann_p95_ms``: top-200 candidates (what ``semantic_hits`` asks first) from the
  index of ``--units`` vectors; ``semantic_p95_ms`` is the p95 of query embedding + search, the
  semantic part of a request (the SQL filter of 200 candidates by primary key comes on top);
- ``recall_at_10``: share of the exact 10 nearest (brute force, float32) among the index's 10.

The ``--units`` vectors are made from real embeddings: each is a seeded mixture of two of
``--bases`` embedded texts plus noise, so they cluster as a real collection does (uniform random
vectors in 384 dimensions have no neighbourhoods worth the name and understate recall). The bases
are distinct windows of the fixture corpus and then of the standard library's source: until
2026-12 the fixture alone was cut into 2,048 windows but held only 352, so 1,696 "bases" were the
empty string, one vector: 69% of the set was that vector (both bases empty) plus isotropic noise,
a ball of random directions, the pathological case for HNSW (recall@10 0.73 at 200k). With distinct bases the same index found 0.985
at 100k (docs/design.md).
"""

from __future__ import annotations

import json
import statistics
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from browser.search.encoder import query_encoder
from browser.search.index import EXPANSION_SEARCH, new_index
from workers.compute.embed import SentenceEmbedder
from workers.pipeline.search import WINDOW

HELP = "semantic search: query p95 at --units vectors, indexing units/s, recall@10 vs exact neighbours"
FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
# Per-coordinate noise, about 0.4 in norm: chosen so the set looks like the embedded texts
# themselves, measured on the 2,048 bases (prose and code): their participation ratio (how many
# directions carry the variance) is 49 and a text's nearest other text sits at cosine 0.73 (median);
# noise 0.02 gives 74 and 0.75 (4,096 vectors), noise 0.05 (the setting until 2026-12) 195 and 0.41, a cloud far
# more isotropic than real embeddings, on which the index still found 0.985 at 100k (0.997 with 0.02).
NOISE = 0.02
QUERIES = ["negation in legal text", "closing brackets", "a king giving orders", "grief over a death",
           "numbers and counting", "love letters", "threats of violence", "food and drink", "the weather",
           "questions about identity", "insults", "prayers to the gods"]


def add_arguments(parser: Any) -> None:
    parser.add_argument("--units", type=int, default=1_000_000, help="vectors in the index")
    parser.add_argument("--bases", type=int, default=2048, help="distinct texts embedded: fixture corpus windows, then standard-library source (also the indexing rate)")
    parser.add_argument("--queries", type=int, default=200, help="queries for latency and recall")
    parser.add_argument("--threads", type=int, default=2, help="threads adding to the index")
    parser.add_argument("--chunk", type=int, default=100_000)


def _windows(n: int) -> list[str]:
    """``n`` distinct word windows, about as long as a unit's text (labels + 3 contexts): the fixture
    corpus first, then the Python standard library's source (present on every machine), so the
    bases span prose and code as a real model's units do. Raises if both together hold fewer."""
    size = 3 * (2 * WINDOW + 1)
    out: list[str] = []
    seen: set[str] = set()

    def take(words: list[str]) -> bool:
        for i in range(0, len(words) - size + 1, size):
            text = " ".join(words[i:i + size])
            if text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    return True
        return False

    words = [w for line in FIXTURE.read_text().splitlines() for w in json.loads(line)["text"].split()]
    if take(words):
        return out
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if take(path.read_text(errors="replace").split()):
            return out
    raise ValueError(f"only {len(out)} distinct windows to embed; ask for fewer --bases")


def _chunk(bases: np.ndarray, start: int, size: int) -> np.ndarray:
    """Vectors start..start+size: seeded mixtures of two bases plus noise, unit length."""
    rng = np.random.default_rng(start)
    a, b = rng.integers(0, len(bases), size), rng.integers(0, len(bases), size)
    w = rng.uniform(0.0, 0.5, (size, 1)).astype(np.float32)
    v = (1 - w) * bases[a] + w * bases[b] + rng.normal(0, NOISE, (size, bases.shape[1])).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _percentiles(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=20)
    return round(statistics.median(times), 2), round(q[18], 2)


def main(opts: dict[str, Any], err: Any) -> dict[str, Any]:
    texts = _windows(opts["bases"])
    embedder = SentenceEmbedder(Path(settings.CACHE_DIR))
    embedder.embed(texts[:64])  # warm
    start = time.perf_counter()
    bases = embedder.embed(texts).numpy()
    indexing = len(texts) / (time.perf_counter() - start)
    enc = query_encoder()
    queries = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(opts["queries"])]
    enc.encode(queries[0])
    embed_ms, query_vectors = [], []
    for q in queries:
        t = time.perf_counter()
        query_vectors.append(enc.encode(q))
        embed_ms.append((time.perf_counter() - t) * 1000)
    qv = np.stack(query_vectors)
    index, add_s = new_index(), 0.0
    best: list[np.ndarray] = [np.full((len(qv), 0), -2.0, np.float32), np.zeros((len(qv), 0), np.int64)]
    for start_key in range(0, opts["units"], opts["chunk"]):
        vectors = _chunk(bases, start_key, min(opts["chunk"], opts["units"] - start_key))
        keys = np.arange(start_key, start_key + len(vectors), dtype=np.uint64)
        t = time.perf_counter()
        index.add(keys, vectors, threads=opts["threads"])
        add_s += time.perf_counter() - t
        sims = qv @ vectors.T  # exact, float32: [Q, chunk]
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best[0], np.take_along_axis(sims, top, 1)], 1)
        cand_k = np.concatenate([best[1], top + start_key], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :10]
        best = [np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_k, keep, 1)]
        err.write(f"{start_key + len(vectors)} vectors indexed, {add_s:.0f} s adding\n")
    ann_ms, recall = [], []
    for i, v in enumerate(qv):
        t = time.perf_counter()
        found = index.search(v, 200)
        ann_ms.append((time.perf_counter() - t) * 1000)
        recall.append(len(set(found.keys[:10].tolist()) & set(best[1][i].tolist())) / 10)
    total = [a + b for a, b in zip(embed_ms, ann_ms, strict=True)]
    return {"units": opts["units"], "indexing_units_per_s": round(indexing, 1),
            "index_add_per_s": round(opts["units"] / add_s, 1),
            "query_embed_p50_ms": _percentiles(embed_ms)[0], "query_embed_p95_ms": _percentiles(embed_ms)[1],
            "ann_p50_ms": _percentiles(ann_ms)[0], "ann_p95_ms": _percentiles(ann_ms)[1],
            "semantic_p50_ms": _percentiles(total)[0], "semantic_p95_ms": _percentiles(total)[1],
            "recall_at_10": round(float(np.mean(recall)), 4), "expansion_search": EXPANSION_SEARCH,
            "query_top1_cosine": round(float(best[0][:, 0].mean()), 3), "noise": NOISE, "bases": len(texts),
            "index_bytes": int(index.memory_usage)}
