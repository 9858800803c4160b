from __future__ import annotations

from django.apps import AppConfig


class CorporaConfig(AppConfig):
    name = "browser.corpora"
    label = "corpora"
    default_auto_field = "django.db.models.BigAutoField"
