"""Tokenizing a corpus's documents into contexts (runs inside a Celery task)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from browser.catalog.models import Model
from browser.corpora.models import Corpus, Document
from browser.corpora.services import contexts_clear, contexts_write, corpus_mark_ready
from workers.compute import loading, tokenize

DOCS_PER_BATCH = 64


def corpus_tokenize(*, corpus_id: int, progress: Callable[..., None]) -> Corpus:
    """(Re)build every context of the corpus in one transaction: all or nothing."""
    corpus = Corpus.objects.select_related("tokenizer_model").get(pk=corpus_id)
    model = corpus.tokenizer_model
    tok = loading.load_tokenizer(model.location, Path(settings.CACHE_DIR))
    layout = tokenize.layout_for(tok, corpus.context_length, causal=model.kind == Model.Kind.CAUSAL_LM)
    doc_ids = list(Document.objects.filter(corpus=corpus).order_by("index").values_list("id", flat=True))
    n_contexts = n_tokens = 0
    with transaction.atomic():
        contexts_clear(corpus=corpus)
        for start in range(0, len(doc_ids), DOCS_PER_BATCH):
            batch = doc_ids[start : start + DOCS_PER_BATCH]
            texts = dict(Document.objects.filter(id__in=batch).values_list("id", "text"))
            token_lists = tokenize.tokenize_batch(tok, [texts[i] for i in batch])
            rows = [(doc_id, piece) for doc_id, ids in zip(batch, token_lists, strict=True)
                    for piece in tokenize.chunk(ids, layout)]
            contexts_write(corpus=corpus, first_index=n_contexts, rows=rows)
            n_contexts += len(rows)
            n_tokens += sum(len(piece) for _, piece in rows)
            progress(start + len(batch), len(doc_ids), f"{n_contexts:,} contexts")
        corpus_mark_ready(corpus=corpus, n_contexts=n_contexts, n_tokens=n_tokens)
    progress(len(doc_ids), len(doc_ids), f"{n_contexts:,} contexts", force=True)
    corpus.refresh_from_db()
    return corpus
