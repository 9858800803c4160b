"""Unit embeddings for semantic search, the queue of units to (re-)embed, and index snapshots."""

from __future__ import annotations

from django.db import models


class UnitEmbedding(models.Model):
    """One MiniLM vector per unit (float32 little-endian ``bytea``, unit length) of the text that
    describes it: its labels and explanations, then its top contexts. ``text_sha`` skips units whose
    text did not change; ``updated`` is what web processes read to catch up with new vectors."""

    unit = models.OneToOneField("catalog.Unit", on_delete=models.CASCADE, primary_key=True,
                                related_name="embedding")
    vector = models.BinaryField()
    text_sha = models.CharField(max_length=64)
    embedder = models.CharField(max_length=40)
    updated = models.DateTimeField(db_index=True)


class PendingEmbedding(models.Model):
    """A unit whose text changed (a label written) and whose vector a worker has to refresh.
    Rows are the queue: written in the label's transaction, claimed with SKIP LOCKED."""

    unit = models.OneToOneField("catalog.Unit", on_delete=models.CASCADE, primary_key=True, related_name="+")
    queued = models.DateTimeField(auto_now_add=True)


class IndexSnapshot(models.Model):
    """A serialized usearch index of every vector up to ``as_of``; web processes load the newest and
    read the vectors written since from ``UnitEmbedding.updated``."""

    blob = models.ForeignKey("core.Blob", on_delete=models.PROTECT)
    as_of = models.DateTimeField()
    count = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)
