"""A compute task nobody waits for any more is not run: it is queued with an expiry
(BROWSER_COMPUTE_EXPIRES_S), and a worker that reaches it later discards it (Celery revokes it)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from django.conf import settings as django_settings

from browser.api.compute import compute_send
from tests.conftest import purge_queues, start_worker, stop_worker
from workers.celery import app, queue

pytestmark = pytest.mark.slow


def _queued(name: str) -> list[dict[str, Any]]:
    """The messages waiting in a queue, read from the broker itself (kombu's Redis list)."""
    broker = redis.Redis.from_url(django_settings.REDIS_URL)
    return [json.loads(raw) for raw in broker.lrange(queue(name), 0, -1)]


def test_an_abandoned_probe_expires_instead_of_running(transactional_db: None, settings: Any,
                                                        tmp_path: Path) -> None:
    settings.BROWSER_COMPUTE_EXPIRES_S = 2
    purge_queues()
    sent = datetime.now(UTC)
    result = compute_send("workers.tasks.probe_unit", [10**9, "nobody waits for this"])
    (message,) = _queued("gpu")
    expires = datetime.fromisoformat(message["headers"]["expires"])
    assert message["headers"]["id"] == result.id
    assert 1.5 <= (expires - sent).total_seconds() <= 3.0
    time.sleep(2.5)  # the web request gave up long ago; a worker comes free only now
    worker = start_worker("expiry")
    try:
        deadline = time.monotonic() + 30
        while AsyncResult(result.id, app=app).state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert AsyncResult(result.id, app=app).state == "REVOKED"  # discarded, not run (nor failed)
    finally:
        stop_worker(worker)
