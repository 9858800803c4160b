"""The Celery app: JSON only, late acks, redelivery of tasks whose worker died, prefetch 1.

Queues: ``gpu`` (model work: harvest shards, finalize, SAE training; one solo-pool process per
GPU, because CUDA does not survive a fork) and ``default`` (tokenizing, scoring, exports), both
named with the ``BROWSER_QUEUE_PREFIX`` in front.

A worker that dies mid-task (SIGKILL, power loss) leaves its message unacknowledged; Redis gives
it back only after the visibility timeout, which must outlast the longest task (hours). The
product does not wait for that: every worker consuming the gpu queue looks for stalled runs
every ``BROWSER_RESUME_EVERY_S`` while idle and queues their work again (see
``workers.jobs.resume_stalled_runs``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, bootsteps
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "browser.settings")

logger = logging.getLogger(__name__)
app = Celery("browser")
app.config_from_object("django.conf:settings", namespace="CELERY")

# Task name -> queue (without the prefix). Tasks not named here go to the default queue.
ROUTES = {
    "workers.tasks.harvest_shards": "gpu",
    "workers.tasks.finalize_run": "gpu",
    "workers.tasks.train_sae": "gpu",
    "workers.tasks.probe_unit": "gpu",
    "workers.tasks.score_labels": "gpu",
    "workers.tasks.score_run": "gpu",
    "workers.tasks.try_text": "default",
    "workers.tasks_steer.steer_prompt": "gpu",
    "workers.tasks_steer.score_interventions": "gpu",
}
_prefix = {"value": ""}


def queue(name: str) -> str:
    """The full name of a queue (``gpu`` or ``default``) with this deployment's prefix."""
    return _prefix["value"] + name


def configure_queues(prefix: str) -> None:
    """Name every queue with ``prefix`` (workers and producers must agree on it)."""
    _prefix["value"] = prefix
    # Each queue with its own exchange and routing key: queues left unbound share the default
    # exchange and key, and a message for one is then delivered to both.
    app.conf.task_queues = [Queue(queue(n), Exchange(queue(n)), routing_key=queue(n)) for n in ("gpu", "default")]
    app.conf.task_default_queue = queue("default")
    app.conf.task_routes = {task: {"queue": queue(name)} for task, name in ROUTES.items()}


def _configured_prefix() -> str:
    from django.conf import settings

    return str(getattr(settings, "QUEUE_PREFIX", ""))


configure_queues(_configured_prefix())
app.autodiscover_tasks(["workers"])
app.autodiscover_tasks(["workers"], related_name="tasks_steer")


def _resume() -> None:
    from django.db import close_old_connections

    from workers.jobs import resume_stalled_runs

    try:
        close_old_connections()
        resume_stalled_runs()
    except Exception as exc:  # the database or broker may be down: the next tick tries again
        logger.warning("could not look for stalled runs: %s", exc)
    finally:
        close_old_connections()


class ResumeStalledRuns(bootsteps.StartStopStep):
    """Every ``BROWSER_RESUME_EVERY_S``, queue the work of runs whose workers died."""

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


app.steps["worker"].add(ResumeStalledRuns)
