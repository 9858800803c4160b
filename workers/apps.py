from __future__ import annotations

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """Holds the management commands that need torch, so the web side never imports it."""

    name = "workers"
    label = "workers"
