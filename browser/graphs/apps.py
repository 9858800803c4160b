from __future__ import annotations

from django.apps import AppConfig


class GraphsConfig(AppConfig):
    name = "browser.graphs"
    default_auto_field = "django.db.models.BigAutoField"
