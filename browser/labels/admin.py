from __future__ import annotations

from django.contrib import admin

from browser.labels.models import Label, LabelRevision


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = ["unit", "author", "text", "revision", "machine", "updated"]
    raw_id_fields = ["unit"]


@admin.register(LabelRevision)
class LabelRevisionAdmin(admin.ModelAdmin):
    list_display = ["unit", "author", "editor", "revision", "action", "at"]
    raw_id_fields = ["unit", "label"]
