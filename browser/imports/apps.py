from __future__ import annotations

from django.apps import AppConfig


class ImportsConfig(AppConfig):
    name = "browser.imports"
    verbose_name = "imports"
