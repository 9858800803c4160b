"""Which workers are up and which queues they consume, busy or idle.

A solo-pool worker busy on a task answers no broadcast (``ping``, ``inspect``) until the task
ends, so the broadcast channel cannot tell a busy worker from none. Each worker instead keeps a
Redis key of its own (its queues, with a time to live), refreshed by a thread of its own while
it runs tasks; the key is deleted when the worker stops and expires when it dies. Redis only: the
web side asks here too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from functools import lru_cache

import redis
from django.conf import settings

from workers.celery import queue

logger = logging.getLogger(__name__)
KEY_PREFIX = "browser:worker:"
# A key outlives two missed refreshes: a worker that died is forgotten within PRESENCE_TTL_S.
REFRESH_EVERY_S = 5.0
PRESENCE_TTL_S = 15


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def announce(hostname: str, queues: list[str]) -> None:
    """Say (again) that the worker ``hostname`` is up and consumes ``queues`` (full names)."""
    value = json.dumps({"queues": sorted(queues), "pid": os.getpid()})
    _client(settings.REDIS_URL).set(KEY_PREFIX + hostname, value, ex=PRESENCE_TTL_S)


def withdraw(hostname: str) -> None:
    _client(settings.REDIS_URL).delete(KEY_PREFIX + hostname)


def workers_up() -> dict[str, list[str]]:
    """Every live worker of this deployment (consuming a queue with its ``BROWSER_QUEUE_PREFIX``):
    its name and the queues it consumes."""
    client = _client(settings.REDIS_URL)
    ours = {queue("gpu"), queue("default")}
    found = {}
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=100):
        value = client.get(key)
        queues = json.loads(value)["queues"] if value is not None else []  # None: expired since the scan
        if ours & set(queues):
            found[key.decode()[len(KEY_PREFIX):]] = queues
    return found


def workers_alive(queue_name: str = "gpu") -> bool:
    """Whether some live worker consumes the queue (``gpu`` or ``default``), busy or not."""
    try:
        up = workers_up()
    except redis.RedisError:  # a broker that cannot be reached has no workers either
        return False
    return any(queue(queue_name) in queues for queues in up.values())


class Announcer(threading.Thread):
    """Refreshes a worker's key every ``REFRESH_EVERY_S`` until stopped (a daemon: it dies with
    the worker, and then the key expires)."""

    def __init__(self, hostname: str, queues: list[str]) -> None:
        super().__init__(name="presence", daemon=True)
        self.hostname, self.queues = hostname, queues
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                announce(self.hostname, self.queues)
            except redis.RedisError as exc:  # Redis restarting: the next refresh says it again
                logger.warning("could not announce worker %s: %s", self.hostname, exc)
            self.stopped.wait(REFRESH_EVERY_S)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
        try:
            withdraw(self.hostname)
        except redis.RedisError as exc:
            logger.warning("could not withdraw worker %s: %s", self.hostname, exc)
