"""The Celery app: JSON only, late acks, redelivery of tasks whose worker died, prefetch 1.

Queues: ``gpu`` (model work: harvest shards, finalize, SAE training; one solo-pool process per
GPU, because CUDA does not survive a fork) and ``default`` (tokenizing, scoring, exports).
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "browser.settings")

app = Celery("browser")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("gpu"), Queue("default")]
app.conf.task_routes = {
    "workers.tasks.harvest_shards": {"queue": "gpu"},
    "workers.tasks.finalize_run": {"queue": "gpu"},
    "workers.tasks.train_sae": {"queue": "gpu"},
    "workers.tasks.try_text": {"queue": "default"},
}
app.autodiscover_tasks(["workers"])
