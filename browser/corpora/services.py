"""Writes of corpora: documents on import, contexts after tokenizing."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from browser.catalog.models import Model, Tokenizer, name_validator
from browser.core.copy import copy_rows
from browser.corpora.models import Context, Corpus, Document
from browser.corpora.readers import CorpusInputError, read_documents

MIN_CONTEXT_LENGTH = 4
MAX_CONTEXT_LENGTH = 2048


def corpus_import(*, name: str, path: Path, tokenizer_model: Model, context_length: int) -> Corpus:
    """Create a corpus and its documents in one transaction; any bad input writes nothing."""
    if not MIN_CONTEXT_LENGTH <= context_length <= MAX_CONTEXT_LENGTH:
        raise CorpusInputError(
            f"context length must be between {MIN_CONTEXT_LENGTH} and {MAX_CONTEXT_LENGTH} (got {context_length})"
        )
    if tokenizer_model.tokenizer is None:
        raise CorpusInputError(f"model {tokenizer_model.name} has no tokenizer")
    try:
        name_validator(name)
    except ValidationError as exc:
        raise CorpusInputError(f"name: {exc.messages[0]} (got {name!r})") from None
    with transaction.atomic():
        if Corpus.objects.filter(name=name).exists():
            raise CorpusInputError(f"a corpus named {name!r} already exists; choose another --name")
        corpus = Corpus(
            name=name,
            tokenizer=tokenizer_model.tokenizer,
            tokenizer_model=tokenizer_model,
            context_length=context_length,
            origin=str(path)[:500],
        )
        try:
            corpus.full_clean()
        except ValidationError as exc:
            raise CorpusInputError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        corpus.save()
        rows = (
            (corpus.pk, index, doc.external_id, doc.title, json.dumps(doc.meta), doc.text)
            for index, doc in enumerate(read_documents(path))
        )
        count = copy_rows(
            "corpora_document",
            ["corpus_id", "index", "external_id", "title", "meta", "text"],
            ["int8", "int4", "text", "text", "jsonb", "text"],
            rows,
        )
        if count == 0:
            raise CorpusInputError(f"{path} holds no text (every document is empty)")
        corpus.n_documents = count
        corpus.save(update_fields=["n_documents"])
    return corpus


def contexts_clear(*, corpus: Corpus) -> None:
    Context.objects.filter(corpus=corpus).delete()


def contexts_write(*, corpus: Corpus, first_index: int, rows: Iterable[tuple[int, Sequence[int]]]) -> int:
    """COPY contexts given as (document id, token ids); returns how many were written."""
    import array

    def encode() -> Iterable[tuple[object, ...]]:
        for offset, (document_id, ids) in enumerate(rows):
            packed = array.array("i", ids)
            yield (corpus.pk, first_index + offset, document_id, packed.tobytes(), len(ids))

    return copy_rows(
        "corpora_context",
        ["corpus_id", "index", "document_id", "tokens", "n_tokens"],
        ["int8", "int4", "int8", "bytea", "int2"],
        encode(),
    )


def corpus_mark_ready(*, corpus: Corpus, n_contexts: int, n_tokens: int) -> None:
    Corpus.objects.filter(pk=corpus.pk).update(
        status=Corpus.Status.READY, n_contexts=n_contexts, n_tokens=n_tokens, error=""
    )


def corpus_counts_set(*, corpus: Corpus, n_documents: int, n_contexts: int, n_tokens: int, context_length: int) -> None:
    """The counts of a corpus that grew by appended documents and contexts (imports)."""
    Corpus.objects.filter(pk=corpus.pk).update(n_documents=n_documents, n_contexts=n_contexts, n_tokens=n_tokens,
                                               context_length=context_length)


def corpus_mark_failed(*, corpus_id: int, error: str) -> None:
    Corpus.objects.filter(pk=corpus_id).update(status=Corpus.Status.FAILED, error=error[:5000])


def corpus_delete(*, name: str) -> None:
    """Delete the corpus called ``name``, if there is one, with its documents and contexts (the demo
    redoes an import that did not finish this way)."""
    Corpus.objects.filter(name=name).delete()


def corpus_create(*, name: str, tokenizer: Tokenizer, tokenizer_model: Model, context_length: int, origin: str,
                  status: str = Corpus.Status.READY) -> Corpus:
    """An empty corpus of contexts made elsewhere (synthetic inputs, imported dashboards);
    ``documents_add`` and ``contexts_write`` fill it."""
    return Corpus.objects.create(name=name, tokenizer=tokenizer, tokenizer_model=tokenizer_model,
                                 context_length=context_length, status=status, origin=origin)


def documents_add(*, corpus: Corpus, rows: Sequence[dict[str, Any]]) -> list[Document]:
    """Append documents (``external_id``, ``title``, ``text``, ``meta``) after the corpus's last one."""
    docs = Document.objects.bulk_create([Document(corpus=corpus, index=corpus.n_documents + i, **row)
                                         for i, row in enumerate(rows)])
    corpus.n_documents += len(docs)
    Corpus.objects.filter(pk=corpus.pk).update(n_documents=corpus.n_documents)
    return docs

