from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def _start_embedded(**_: Any) -> None:
    from browser.core import embedded

    embedded.ensure_configured()


def _lower_priority(**_: Any) -> None:
    """A worker yields the CPU to the web processes on a shared machine (settings.WORKER_NICE)."""
    import os

    from django.conf import settings

    if settings.WORKER_NICE:
        os.nice(settings.WORKER_NICE)


class WorkersConfig(AppConfig):
    """Holds the management commands that need torch, so the web side never imports it."""

    name = "workers"
    label = "workers"

    def ready(self) -> None:
        # The Celery app, configured from the settings, for every task sent from this process
        # (tasks are `shared_task`s: without the app they would bind to Celery's default one).
        from celery.signals import worker_init

        import workers.celery  # noqa: F401

        # A worker needs its broker before anything touches the database.
        worker_init.connect(_start_embedded, weak=False)
        worker_init.connect(_lower_priority, weak=False)
