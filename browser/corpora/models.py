"""Corpora, their documents, and the fixed-length token contexts that examples point into."""

from __future__ import annotations

from django.db import models

from browser.catalog.models import name_validator


class Corpus(models.Model):
    class Status(models.TextChoices):
        TOKENIZING = "tokenizing", "tokenizing"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    tokenizer = models.ForeignKey("catalog.Tokenizer", on_delete=models.PROTECT)
    # The model whose tokenizer (and special tokens) made the contexts.
    tokenizer_model = models.ForeignKey("catalog.Model", on_delete=models.PROTECT, related_name="+")
    context_length = models.IntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TOKENIZING)
    origin = models.CharField(max_length=500, blank=True)
    n_documents = models.IntegerField(default=0)
    n_contexts = models.IntegerField(default=0)
    n_tokens = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "corpora"

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="documents")
    index = models.IntegerField()
    external_id = models.CharField(max_length=200, blank=True)
    title = models.CharField(max_length=500, blank=True)
    meta = models.JSONField(default=dict, blank=True)
    text = models.TextField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["corpus", "index"], name="document_unique_index")]


class Context(models.Model):
    """A window of token ids, exactly as the model sees it (special tokens included)."""

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="contexts")
    index = models.IntegerField()
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="+")
    # Token ids as little-endian int32: four bytes a token, no per-row array conversion.
    tokens = models.BinaryField()
    n_tokens = models.SmallIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["corpus", "index"], name="context_unique_index")]
