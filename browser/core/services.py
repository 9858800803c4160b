"""Writes of binary data in PostgreSQL (blobs), readable by any worker: no shared filesystem is
assumed. Reads: ``browser.core.selectors``."""

from __future__ import annotations

import hashlib

from browser.core.copy import copy_rows
from browser.core.models import Blob

CHUNK_BYTES = 16 * 1024 * 1024


def blob_write(*, key: str, data: bytes) -> Blob:
    """Store ``data`` under a new key (call inside the transaction that uses it)."""
    blob = Blob.objects.create(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    view = memoryview(data)
    rows = ((blob.pk, i, bytes(view[start : start + CHUNK_BYTES]))
            for i, start in enumerate(range(0, max(len(data), 1), CHUNK_BYTES)))
    copy_rows("core_blobchunk", ["blob_id", "index", "data"], ["int8", "int4", "bytea"], rows)
    return blob


def blob_delete(*, blob_ids: list[int]) -> None:
    Blob.objects.filter(pk__in=blob_ids).delete()
