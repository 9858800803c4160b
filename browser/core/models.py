from __future__ import annotations

from django.db import models


class Blob(models.Model):
    """Binary data any worker can read (SAE weights, shard partials): no shared filesystem.

    Stored as chunks so that no single row holds hundreds of megabytes.
    """

    key = models.CharField(max_length=200, unique=True)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.key} ({self.size} bytes)"


class BlobChunk(models.Model):
    blob = models.ForeignKey(Blob, on_delete=models.CASCADE, related_name="chunks")
    index = models.IntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["blob", "index"], name="blobchunk_unique")]
