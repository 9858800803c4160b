from __future__ import annotations

from django.contrib import admin

from browser.catalog.models import Model, Sae, Score, Source, Tokenizer, Unit, UnitRelation


@admin.register(Tokenizer)
class TokenizerAdmin(admin.ModelAdmin):
    list_display = ["name", "vocab_hash", "created"]
    exclude = ["tokens"]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "architecture", "n_layers", "d_model", "d_mlp", "created"]


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "hook_point", "kind", "n_units"]
    list_filter = ["kind", "model"]


@admin.register(Sae)
class SaeAdmin(admin.ModelAdmin):
    list_display = ["source", "architecture", "d_in", "d_sae", "created"]


@admin.register(Unit)
class UnitAdmin(admin.ModelAdmin):
    list_display = ["source", "index", "layer", "kind", "density", "max_activation", "top_token"]
    list_filter = ["kind", "layer"]
    raw_id_fields = ["source", "stats_run"]
    exclude = ["search"]


@admin.register(Score)
class ScoreAdmin(admin.ModelAdmin):
    list_display = ["unit", "name", "version", "value", "computed"]
    list_filter = ["name"]
    raw_id_fields = ["unit", "run", "label"]


@admin.register(UnitRelation)
class UnitRelationAdmin(admin.ModelAdmin):
    list_display = ["unit", "kind", "rank", "other", "value"]
    raw_id_fields = ["unit", "other"]
