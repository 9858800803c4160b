"""Reads of binary data stored in PostgreSQL (written by ``browser.core.services.blob_write``)."""

from __future__ import annotations

import hashlib

from browser.core.models import Blob, BlobChunk


def blob_read(blob: Blob) -> bytes:
    chunks = BlobChunk.objects.filter(blob=blob).order_by("index").values_list("data", flat=True)
    data = b"".join(bytes(chunk) for chunk in chunks)
    if hashlib.sha256(data).hexdigest() != blob.sha256:
        raise ValueError(f"blob {blob.key} is corrupt (checksum mismatch)")
    return data
