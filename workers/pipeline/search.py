"""Embedding units for semantic search (on a worker, with the packaged MiniLM): the text of a unit is
its labels (explanations included: machine labels are labels), then a few of its top contexts around
their max token. Vectors go to ``UnitEmbedding``; a snapshot of the usearch index lets web processes
start without reading every vector."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from browser.catalog.models import Unit
from browser.corpora.models import Context
from browser.examples.models import Example
from browser.examples.selectors import vocab_for
from browser.labels.models import Label
from browser.search.index import new_index, vectors_of
from browser.search.models import UnitEmbedding
from browser.search.services import (
    embedding_queue_done,
    embedding_queue_peek,
    embeddings_forget,
    embeddings_store,
    snapshot_store,
)
from workers.compute.embed import EMBEDDER, SentenceEmbedder
from workers.pipeline.loader import device_for

TOP_CONTEXTS = 3  # top examples per unit in its text
WINDOW = 8  # tokens either side of an example's max token
CLAIM_BATCH = 256
EMBED_BATCH = 512


@lru_cache(maxsize=1)
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(Path(settings.CACHE_DIR), device_for())


def _context_snippets(units: list[Unit]) -> dict[int, list[str]]:
    examples = list(Example.objects.filter(unit__in=[u.pk for u in units if u.stats_run_id], kind=Example.Kind.TOP,
                                           rank__lt=TOP_CONTEXTS)
                    .values_list("unit_id", "run_id", "context_id", "max_pos"))
    by_unit = {u.pk: u for u in units}
    tokens = dict(Context.objects.filter(pk__in={e[2] for e in examples}).values_list("pk", "tokens"))
    out: dict[int, list[str]] = {}
    for unit_id, run_id, context_id, pos in sorted(examples):
        unit = by_unit[unit_id]
        if run_id != unit.stats_run_id or context_id not in tokens:
            continue
        vocab = vocab_for(unit.source.model)
        ids = np.frombuffer(bytes(tokens[context_id]), dtype="<i4")[max(0, pos - WINDOW): pos + WINDOW + 1]
        out.setdefault(unit_id, []).append("".join(vocab.token(int(t)) for t in ids if t not in vocab.special).strip())
    return out


def unit_texts(unit_ids: Iterable[int]) -> dict[int, str]:
    """The text embedded for each unit: labels first (most recent first), then its top contexts."""
    units = list(Unit.objects.filter(pk__in=list(unit_ids)).select_related("source__model__tokenizer")
                 .defer("search", "source__model__tokenizer__tokens"))
    labels: dict[int, list[str]] = {}
    for unit_id, text in Label.objects.filter(unit__in=units).order_by("-updated").values_list("unit_id", "text"):
        labels.setdefault(unit_id, []).append(text)
    snippets = _context_snippets(units)
    texts = {}
    for unit in units:
        parts = labels.get(unit.pk, []) + snippets.get(unit.pk, [])
        texts[unit.pk] = ". ".join(p for p in parts if p) or unit.top_token
    return texts


def embed_units(unit_ids: Iterable[int], *, force: bool = False) -> int:
    """Embed (or re-embed where the text changed) the given units; returns how many vectors were written."""
    all_texts = unit_texts(unit_ids)
    emptied = [k for k, v in all_texts.items() if not v.strip()]
    if emptied:  # nothing left to describe it (its last label deleted): a tombstone takes it out of the index
        embeddings_forget(unit_ids=emptied)
    texts = {k: v for k, v in all_texts.items() if v.strip()}
    shas = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in texts.items()}
    if not force:
        same = set(UnitEmbedding.objects.filter(unit_id__in=list(texts)).values_list("unit_id", "text_sha"))
        texts = {k: v for k, v in texts.items() if (k, shas[k]) not in same}
    if not texts:
        return 0
    keys = list(texts)
    vectors = embedder().embed([texts[k] for k in keys]).numpy()
    return embeddings_store(rows=[(k, vectors[i], shas[k]) for i, k in enumerate(keys)], embedder=EMBEDDER)


def embed_pending(*, limit: int = 10_000, before: datetime | None = None) -> int:
    """Embed queued units, oldest first (only those queued up to ``before`` if given: the task
    takes what was queued when it started, and writes that come while it runs queue the next
    task behind whatever else the worker has to do, instead of keeping this one running).
    Entries leave the queue only after their vectors are stored, and only if not queued again
    meanwhile: a worker killed (or two workers sharing the queue) costs at most a unit embedded
    twice, never an edit left unembedded."""
    done = 0
    while done < limit:
        entries = embedding_queue_peek(limit=CLAIM_BATCH, before=before)
        if not entries:
            return done
        with transaction.atomic():
            embed_units([u for u, _ in entries])
            embedding_queue_done(entries=entries)
        done += len(entries)
    return done


def embed_source(source_id: int, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Embed every unit of a source whose text changed, in batches."""
    ids = list(Unit.objects.filter(source_id=source_id).order_by("index").values_list("pk", flat=True))
    written = 0
    for start in range(0, len(ids), EMBED_BATCH):
        written += embed_units(ids[start:start + EMBED_BATCH])
        if progress is not None:
            progress(min(start + EMBED_BATCH, len(ids)), len(ids))
    return written


def snapshot_build(*, batch: int = 50_000) -> int:
    """Serialize an index of every stored vector (web processes then read only what is newer)."""
    as_of = timezone.now()
    index = new_index()
    qs = UnitEmbedding.objects.filter(updated__lte=as_of).order_by("unit_id")
    last = 0
    while True:
        rows = list(qs.filter(unit_id__gt=last).values_list("unit_id", "vector")[:batch])
        if not rows:
            break
        last = rows[-1][0]
        rows = [r for r in rows if r[1]]  # tombstones are not indexed
        if not rows:
            continue
        index.add(np.array([r[0] for r in rows], np.uint64), vectors_of([bytes(r[1]) for r in rows]))
    data = index.save()  # None only when saving to a path
    snapshot_store(data=bytes(data or b""), as_of=as_of, count=len(index))
    return len(index)
