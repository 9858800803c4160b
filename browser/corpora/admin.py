from __future__ import annotations

from django.contrib import admin

from browser.corpora.models import Context, Corpus, Document


@admin.register(Corpus)
class CorpusAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "n_documents", "n_contexts", "n_tokens", "context_length", "created"]


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["corpus", "index", "external_id", "title"]
    raw_id_fields = ["corpus"]


@admin.register(Context)
class ContextAdmin(admin.ModelAdmin):
    list_display = ["corpus", "index", "document", "n_tokens"]
    raw_id_fields = ["corpus", "document"]
