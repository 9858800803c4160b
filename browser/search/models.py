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


class SourceMap(models.Model):
    """A 2-D layout of a source's units (UMAP of decoder or output directions), for the source state
    ``state`` (``browser.search.maps.source_state``): a map of an older state is never shown."""

    source = models.ForeignKey("catalog.Source", on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=64)
    method = models.CharField(max_length=100)
    coords = models.BinaryField()  # float32 little-endian [n_units, 2], in unit index order
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "state"], name="sourcemap_unique_state")]


class FamilyLink(models.Model):
    """A feature and its nearest feature in another SAE: ``width`` links a wider SAE's feature
    (child) to its parent in a narrower SAE at the same hook point; ``layer`` links a feature
    (parent) to its most similar feature in the next layer's SAE (child)."""

    class Kind(models.TextChoices):
        WIDTH = "width", "parent in a narrower SAE"
        LAYER = "layer", "most similar in the next layer"

    parent = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="+")
    child = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    cosine = models.FloatField()
    # Co-activation: the share of the child's top contexts that are also among the parent's (None when
    # the child has no top examples, e.g. not harvested yet).
    coactivation = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["child", "kind", "parent"], name="familylink_unique")]
        indexes = [models.Index(fields=["parent", "kind"], name="familylink_parent")]


class WindowEmbedding(models.Model):
    """The vector of one example window's text under one embedder: the score job's cache, so each
    distinct window is embedded once across all units, sources and runs (and any job that embeds
    the same text under the same embedder finds it here)."""

    embedder = models.CharField(max_length=40)
    text_sha = models.BinaryField()  # SHA-256 of the window's text (32 bytes)
    vector = models.BinaryField()  # float32 little-endian

    class Meta:
        constraints = [models.UniqueConstraint(fields=["embedder", "text_sha"], name="window_embedding_unique")]
