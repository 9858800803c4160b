from __future__ import annotations

from typing import Any

from rest_framework import serializers

from browser.catalog.uids import unit_uid
from browser.labels.models import Label, LabelRevision


class LabelSerializer(serializers.ModelSerializer):
    unit = serializers.SerializerMethodField()
    author = serializers.CharField(source="author.username")
    hook_point = serializers.CharField(source="unit.source.hook_point")
    source_type = serializers.CharField(source="unit.kind")

    class Meta:
        model = Label
        fields = ["id", "unit", "hook_point", "source_type", "text", "tags", "confidence", "machine", "author",
                  "revision", "created", "updated"]

    def get_unit(self, label: Label) -> str:
        return unit_uid(label.unit)


class LabelWriteSerializer(serializers.Serializer):
    """Create or edit your label of a unit. ``revision`` is the revision you read (0: none)."""

    unit = serializers.CharField(max_length=300, help_text="model/source/index")
    text = serializers.CharField(max_length=2000, trim_whitespace=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), max_length=20, required=False)
    confidence = serializers.FloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    revision = serializers.IntegerField(min_value=0, required=False, allow_null=True)


class LabelEditSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=2000, trim_whitespace=False, required=False)
    tags = serializers.ListField(child=serializers.CharField(max_length=50), max_length=20, required=False)
    confidence = serializers.FloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    revision = serializers.IntegerField(min_value=1, required=False, allow_null=True,
                                        help_text="the revision you read; a mismatch answers 409")


class RevisionSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username")
    editor = serializers.SerializerMethodField()

    class Meta:
        model = LabelRevision
        fields = ["revision", "action", "author", "editor", "before", "after", "at"]

    def get_editor(self, revision: LabelRevision) -> str | None:
        return revision.editor.username if revision.editor else None


class ImportReportSerializer(serializers.Serializer):
    rows = serializers.IntegerField()
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    errors = serializers.ListField(child=serializers.DictField())
    dry_run = serializers.BooleanField()
    applied = serializers.BooleanField()


def label_filters(params: Any) -> dict[str, Any]:
    """Parse list/export filters from query parameters; bad values raise a ValidationError."""
    from datetime import UTC

    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    filters: dict[str, Any] = {k: params.get(k) or None for k in ("model", "source", "author")}
    since = params.get("updated_since")
    if since:
        parsed = parse_datetime(since)
        if parsed is None:
            raise serializers.ValidationError({"updated_since": "use an ISO 8601 datetime, e.g. 2026-01-31T00:00:00Z"})
        filters["updated_since"] = parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)
    machine = params.get("machine")
    if machine not in (None, ""):
        if machine not in ("true", "false"):
            raise serializers.ValidationError({"machine": "use true or false"})
        filters["machine"] = machine == "true"
    return filters
