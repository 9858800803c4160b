"""Example windows for the embedding-based scores: the text around an example's max token, its
MiniLM vector read from the persistent cache (``search_windowembedding``, keyed by the text's
SHA-256 and the embedder) or embedded once and stored there, and the corpus's common component."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings

from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.runs.models import Run
from browser.search.selectors import window_embeddings
from browser.search.services import window_embeddings_store
from workers.compute import loading
from workers.compute.embed import EMBEDDER
from workers.pipeline.loader import device_for
from workers.pipeline.scores.common import COMMON_WINDOWS, WINDOW


def window_text(tokenizer: Any, ids: list[int], pos: int) -> str:
    """The decoded window of WINDOW tokens each side of ``pos`` (special tokens dropped)."""
    return str(tokenizer.decode(ids[max(0, pos - WINDOW): pos + WINDOW + 1], skip_special_tokens=True)).strip()


def text_sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class Windows:
    """Window vectors for one job: each (context, position) decoded once however many units and
    sources share it, each distinct text embedded once across every job (the cache), and the
    corpus's common component. ``embedded`` and ``cached`` count the job's distinct texts that it
    embedded and that it found in the cache."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._tokenizer: Any = None
        self._embedder: Any = None
        self._rows: dict[tuple[int, int], int] = {}
        self._vectors = torch.empty(0)
        self._common: torch.Tensor | None = None
        self._seen: set[bytes] = set()  # text hashes this job has looked up
        self.embedded = 0
        self.cached = 0
        self.seconds = 0.0  # spent on the embedding-based score (see _cluster_scores)

    @property
    def tokenizer(self) -> Any:
        """The run's model's tokenizer (loaded on first use: toy models have none)."""
        if self._tokenizer is None:
            self._tokenizer = loading.load_tokenizer(self.run.model.location, Path(settings.CACHE_DIR))
        return self._tokenizer

    def _embed(self, texts: list[str]) -> torch.Tensor:
        if self._embedder is None:
            from workers.compute.embed import SentenceEmbedder

            self._embedder = SentenceEmbedder(Path(settings.CACHE_DIR), device_for())
        return self._embedder.embed(texts)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[N, d] vectors of ``texts``: cached ones read, the others embedded (each distinct text
        once, in first-seen order) and stored."""
        shas = [text_sha(t) for t in texts]
        found = window_embeddings(embedder=EMBEDDER, shas=sorted(set(shas)))
        missing = {s: t for s, t in zip(shas, texts, strict=True) if s not in found}
        if missing:
            vectors = self._embed(list(missing.values())).numpy()
            window_embeddings_store(embedder=EMBEDDER, rows=list(zip(missing, vectors, strict=True)))
            found.update(zip(missing, vectors, strict=True))
        new = set(shas) - self._seen
        self.embedded += len(missing)
        self.cached += len(new) - len(missing)
        self._seen |= new
        if not texts:
            return torch.empty(0)
        return torch.from_numpy(np.stack([found[s] for s in shas]))

    def vectors(self, keys: list[tuple[int, int]], tokens: dict[int, list[int]]) -> torch.Tensor:
        """[N, d] embeddings of the windows around (context id, position) ``keys``."""
        new = sorted({k for k in keys if k not in self._rows})
        if new:
            embedded = self.embed_texts([window_text(self.tokenizer, tokens[c], p) for c, p in new])
            self._rows.update({k: len(self._vectors) + i for i, k in enumerate(new)})
            self._vectors = torch.cat([self._vectors, embedded]) if len(self._vectors) else embedded
        return self._vectors[[self._rows[k] for k in keys]]

    def common(self) -> torch.Tensor | None:
        if self._common is None:
            windows = common_windows(self.run, self.tokenizer)
            self._common = self.embed_texts(windows).mean(dim=0) if windows else None
        return self._common


def common_windows(run: Run, tokenizer: Any, n: int = COMMON_WINDOWS, seed: int = 0) -> list[str]:
    """``n`` windows of the run's corpus, each around a random non-special token of a random
    context (both drawn with replacement from a generator seeded with ``seed``): the same for
    every run on the corpus."""
    corpus = run.corpus
    if corpus.n_contexts == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(corpus.n_contexts, (n,), generator=gen).tolist()
    where = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
    rows = dict(Context.objects.filter(corpus=corpus, index__in=set(picks)).values_list("index", "tokens"))
    special = set(corpus.tokenizer.special_ids)
    out = []
    for index, u in zip(picks, where, strict=True):
        ids = decode_tokens(bytes(rows[index]))
        valid = [p for p, t in enumerate(ids) if t not in special]
        if valid:
            out.append(window_text(tokenizer, ids, valid[int(u * len(valid))]))
    return out
