from __future__ import annotations

from django.contrib import admin

from browser.core.models import Blob


@admin.register(Blob)
class BlobAdmin(admin.ModelAdmin):
    list_display = ["key", "size", "sha256", "created"]
