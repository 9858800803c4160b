from __future__ import annotations

from django.contrib import admin

from browser.examples.models import Example, UnitStats


@admin.register(UnitStats)
class UnitStatsAdmin(admin.ModelAdmin):
    list_display = ["unit", "run", "density", "mean", "max", "n_tokens"]
    raw_id_fields = ["unit", "run"]
    exclude = ["hist"]


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ["unit", "run", "kind", "bucket", "rank", "max_value", "max_pos"]
    raw_id_fields = ["unit", "run", "context"]
    exclude = ["values"]
