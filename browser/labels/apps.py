from __future__ import annotations

from django.apps import AppConfig


class LabelsConfig(AppConfig):
    name = "browser.labels"
    label = "labels"
    default_auto_field = "django.db.models.BigAutoField"
