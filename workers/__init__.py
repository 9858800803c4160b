"""Celery app, tasks and the compute core (``workers.compute``: plain torch, no Django)."""

from __future__ import annotations

from workers.celery import app as celery_app

__all__ = ["celery_app"]
