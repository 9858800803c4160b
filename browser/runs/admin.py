from __future__ import annotations

from django.contrib import admin

from browser.runs.models import Job, Run, Shard


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "title", "status", "done", "total", "attempts", "created"]
    list_filter = ["kind", "status"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "corpus", "status", "contexts_done", "contexts_total", "created"]
    list_filter = ["status"]


@admin.register(Shard)
class ShardAdmin(admin.ModelAdmin):
    list_display = ["run", "index", "start", "end", "status", "claimed_by", "attempts", "heartbeat"]
    list_filter = ["status"]
