"""Reads of corpora and contexts."""

from __future__ import annotations

import array

from django.db.models import QuerySet

from browser.corpora.models import Context, Corpus


def corpus_list() -> QuerySet[Corpus]:
    return Corpus.objects.select_related("tokenizer_model").order_by("-created")


def context_ids(context: Context) -> list[int]:
    return decode_tokens(bytes(context.tokens))


def decode_tokens(data: bytes) -> list[int]:
    values = array.array("i")
    values.frombytes(data)
    return values.tolist()
