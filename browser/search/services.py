"""Writes of the search side: queue units for (re-)embedding, store vectors, record a snapshot, keep
a source's map and its feature families."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from browser.catalog.models import Source
from browser.core.services import blob_delete, blob_write
from browser.search.models import (
    FamilyLink,
    IndexSnapshot,
    PendingEmbedding,
    SourceMap,
    UnitEmbedding,
    WindowEmbedding,
)
from browser.search.overview_selectors import top_context_overlap

EMBED_TASK = "workers.tasks_search.embed_pending"


# Set in Redis while an embedding task is queued and not yet started: label writes then send none
# (the queued task will take their units). The task clears it when it starts, so a write that lands
# while it runs sends the next one. The timeout bounds what a lost task (a purged queue) costs: a
# minute without a new task, and at most one more task a minute while one waits behind a long
# harvest. The key carries the deployment's queue prefix, which web and worker processes share.
EMBED_TASK_QUEUED_S = 60


def _flag() -> tuple[Any, str]:
    import redis
    from django.conf import settings

    from workers.celery import queue

    return (redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2),
            f"browser:{queue('embed-task-queued')}")


def _send_embed_task() -> None:
    import redis

    from workers.celery import app

    client, key = _flag()
    try:
        if not client.set(key, 1, nx=True, ex=EMBED_TASK_QUEUED_S):
            return  # a task is queued already
    except redis.RedisError:
        pass  # the broker is Redis too: sending will say what is wrong
    try:
        app.send_task(EMBED_TASK)
    except Exception:
        embed_task_started()  # not sent: the next write tries again
        raise


def embed_task_queued() -> bool:
    """Whether a woken embedding task is waiting for a worker."""
    client, key = _flag()
    return bool(client.exists(key))


def embed_task_started() -> None:
    """Called by the embedding task as it starts: the next label write queues a new task."""
    import redis

    client, key = _flag()
    try:
        client.delete(key)
    except redis.RedisError:
        pass


def embedding_queue(*, unit_ids: Iterable[int]) -> None:
    """Mark units for re-embedding, in the caller's transaction; once it commits, a task wakes a
    worker unless one is already queued (one queued task at a time, however many writes: each
    write sending its own task filled the worker's queue ahead of harvests). The rows stay queued
    if the broker is down: the next task takes them."""
    ids = sorted(set(unit_ids))
    if not ids:
        return
    with connection.cursor() as cursor:
        # A unit queued again gets a new time, so a worker that read the older entry leaves it queued.
        cursor.execute("INSERT INTO search_pendingembedding (unit_id, queued) SELECT u, clock_timestamp() "
                       "FROM unnest(%s) u JOIN catalog_unit c ON c.id = u "
                       "ON CONFLICT (unit_id) DO UPDATE SET queued = excluded.queued", [ids])
    queued = any(getattr(entry[1], "__name__", "") == _send_embed_task.__name__
                 for entry in getattr(connection, "run_on_commit", []))
    if not queued:
        transaction.on_commit(_send_embed_task, robust=True)


def embedding_queue_peek(*, limit: int, before: datetime | None = None) -> list[tuple[int, datetime]]:
    """The oldest queued (unit id, queued time) entries (only those queued up to ``before`` if
    given), without locking them: a worker embeds them outside any lock (holding the queue's row
    locks while it waited for a unit's lock deadlocked against label writes, which lock the unit,
    then the queue)."""
    qs = PendingEmbedding.objects.order_by("queued")
    if before is not None:
        qs = qs.filter(queued__lte=before)
    return list(qs.values_list("unit_id", "queued")[:limit])


def embedding_queue_done(*, entries: list[tuple[int, datetime]]) -> int:
    """Remove the entries a worker embedded, each only if it was not queued again meanwhile."""
    if not entries:
        return 0
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM search_pendingembedding p USING unnest(%s::int8[], %s::timestamptz[]) e(u, q) "
                       "WHERE p.unit_id = e.u AND p.queued = e.q", [[u for u, _ in entries], [q for _, q in entries]])
        return cursor.rowcount


def embeddings_store(*, rows: list[tuple[int, np.ndarray, str]], embedder: str) -> int:
    """Upsert (unit id, vector, text sha) rows; ``updated`` is now, so web processes pick them up."""
    now = timezone.now()
    objs = [UnitEmbedding(unit_id=uid, vector=np.asarray(vec, "<f4").tobytes(), text_sha=sha, embedder=embedder,
                          updated=now) for uid, vec, sha in rows]
    UnitEmbedding.objects.bulk_create(objs, update_conflicts=True, unique_fields=["unit"],
                                      update_fields=["vector", "text_sha", "embedder", "updated"], batch_size=2000)
    return len(objs)


def embeddings_forget(*, unit_ids: list[int]) -> int:
    """Tombstones (an empty vector, a fresh ``updated``) for units with a vector and nothing left to
    embed: web processes read them like any new row and take the units out of their index."""
    return UnitEmbedding.objects.filter(unit_id__in=unit_ids).exclude(vector=b"").update(
        vector=b"", text_sha="", updated=timezone.now())


def snapshot_store(*, data: bytes, as_of: datetime, count: int) -> IndexSnapshot:
    """Keep the new snapshot and drop the older ones (their blobs too)."""
    with transaction.atomic():
        blob = blob_write(key=f"search-index-{timezone.now().timestamp():.6f}", data=data)
        snap = IndexSnapshot.objects.create(blob=blob, as_of=as_of, count=count)
        old = list(IndexSnapshot.objects.exclude(pk=snap.pk).values_list("pk", "blob_id"))
        IndexSnapshot.objects.filter(pk__in=[p for p, _ in old]).delete()
        blob_delete(blob_ids=[b for _, b in old])
    return snap


def source_map_store(*, source: Source, state: str, coords: np.ndarray, method: str) -> SourceMap:
    """Keep the layout for ``state`` (maps of other states of the source are dropped)."""
    with transaction.atomic():
        SourceMap.objects.filter(source=source).exclude(state=state).delete()
        row, _ = SourceMap.objects.update_or_create(
            source=source, state=state,
            defaults={"coords": np.asarray(coords, "<f4").tobytes(), "method": method})
    return row


def family_links_replace(*, unit_ids: Iterable[int], kind: str, links: list[tuple[int, int, float]]) -> int:
    """Replace the ``kind`` links whose child is one of ``unit_ids`` by ``links`` (parent, child, cosine),
    with their co-activation (``top_context_overlap``)."""
    overlap = top_context_overlap([(p, c) for p, c, _ in links])
    with transaction.atomic():
        FamilyLink.objects.filter(child_id__in=list(unit_ids), kind=kind).delete()
        FamilyLink.objects.bulk_create([FamilyLink(parent_id=p, child_id=c, kind=kind, cosine=v,
                                                   coactivation=overlap.get((p, c))) for p, c, v in links],
                                       batch_size=5000)
    return len(links)


def window_embeddings_store(*, embedder: str, rows: list[tuple[bytes, np.ndarray]]) -> int:
    """Cache (text SHA-256, vector) rows of ``embedder``; a window another job stored meanwhile is
    kept as it is (both vectors embed the same text). Returns how many rows were new."""
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO search_windowembedding (embedder, text_sha, vector) "
                       "SELECT %s, s, v FROM unnest(%s::bytea[], %s::bytea[]) AS r(s, v) "
                       "ON CONFLICT (embedder, text_sha) DO NOTHING",
                       [embedder, [sha for sha, _ in rows], [np.asarray(v, "<f4").tobytes() for _, v in rows]])
        return cursor.rowcount


def window_embeddings_clear(*, embedder: str) -> int:
    """Empty the window cache of ``embedder`` (benchmarks of a cold cache; a changed model)."""
    return WindowEmbedding.objects.filter(embedder=embedder).delete()[0]
