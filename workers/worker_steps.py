"""What a worker does besides its tasks (Celery bootsteps, added by name in ``workers.celery``):
announce itself (``workers.presence``) and, when it consumes the gpu queue, look for stalled runs."""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from workers.celery import queue
from workers.presence import Announcer

logger = logging.getLogger(__name__)


def _resume() -> None:
    from django.db import close_old_connections

    from workers.queueing import resume_stalled_runs

    try:
        close_old_connections()
        resume_stalled_runs()
    except Exception as exc:  # the database or broker may be down: the next tick tries again
        logger.warning("could not look for stalled runs: %s", exc)
    finally:
        close_old_connections()


class ResumeStalledRuns(bootsteps.StartStopStep):
    """Every ``BROWSER_RESUME_EVERY_S`` while idle, queue the work of runs whose workers died."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        from django.conf import settings

        if queue("gpu") not in worker.app.amqp.queues.consume_from:
            return  # only the workers that can run harvest tasks watch over runs
        self.tref = worker.timer.call_repeatedly(settings.RESUME_EVERY_S, _resume, priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


class Presence(bootsteps.StartStopStep):
    """The worker's presence key, refreshed by a thread of its own: the timer of a solo worker
    does not tick while it runs a task, a thread does."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.announcer: Announcer | None = None

    def start(self, worker: Any) -> None:
        self.announcer = Announcer(worker.hostname, list(worker.app.amqp.queues.consume_from))
        self.announcer.start()

    def stop(self, worker: Any) -> None:
        if self.announcer is not None:
            self.announcer.stop()
            self.announcer = None

    def terminate(self, worker: Any) -> None:
        self.stop(worker)
