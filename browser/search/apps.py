from __future__ import annotations

from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "browser.search"
    label = "search"
    default_auto_field = "django.db.models.BigAutoField"
