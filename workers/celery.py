"""The Celery app: JSON only, late acks, redelivery of tasks whose worker died, prefetch 1.

Queues: ``gpu`` (model work: harvest shards, finalize, SAE training; one solo-pool process per
GPU, because CUDA does not survive a fork) and ``default`` (tokenizing, scoring, exports), both
named with the ``BROWSER_QUEUE_PREFIX`` in front.

A worker that dies mid-task (SIGKILL, power loss) leaves its message unacknowledged; Redis gives
it back only after the visibility timeout, which must outlast the longest task (hours). The
product does not wait for that: every worker consuming the gpu queue looks for stalled runs
every ``BROWSER_RESUME_EVERY_S`` while idle and queues their work again (see
``workers.queueing.resume_stalled_runs``). Every worker announces itself in Redis while it runs,
busy or idle (``workers.presence``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "browser.settings")

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
    "workers.tasks_steer.steer_prompt": "gpu",
    "workers.tasks_steer.score_interventions": "gpu",
    "workers.tasks_groundtruth.sae_sweep": "gpu",
    "workers.tasks_search.embed_pending": "gpu",
    "workers.tasks_search.embed_source": "gpu",
    "workers.tasks_search.source_overview": "gpu",
    "workers.tasks_graphs.compute_graph": "gpu",
    "workers.tasks_graphs.check_graph": "gpu",
}
_prefix = {"value": ""}


def queue(name: str) -> str:
    """The full name of a queue (``gpu`` or ``default``) with this deployment's prefix."""
    return _prefix["value"] + name


def worker_argv(*, node: str, queues: Sequence[str] | None = None) -> list[str]:
    """The one command line that starts a worker (the demo, the tests and the benchmarks use it):
    the solo pool, one process per GPU (CUDA does not survive a fork, and the compiled CPU pass's
    thread pool is not fork-safe), on the gpu and default queues of this deployment unless told."""
    names = ",".join(queues if queues is not None else (queue("gpu"), queue("default")))
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", names, "--pool", "solo",
            "-n", f"{node}@%h", "--loglevel", "info", "--without-mingle", "--without-gossip"]


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
app.autodiscover_tasks(["workers"], related_name="tasks_groundtruth")
app.autodiscover_tasks(["workers"], related_name="tasks_search")
app.autodiscover_tasks(["workers"], related_name="tasks_graphs")


# Announce the worker (workers.presence) and watch over runs: by name, so that this module imports
# nothing of the product's and the steps may import it.
app.steps["worker"].update({"workers.worker_steps:Presence", "workers.worker_steps:ResumeStalledRuns"})
