"""Imports over the API: Neuronpedia upload batches (curators only)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.api.permissions import ReadOrCurate
from browser.catalog.models import Model
from browser.imports.neuronpedia import neuronpedia_import

MAX_FILES = 16


class ImportErrorSerializer(serializers.Serializer):
    file = serializers.CharField()
    feature = serializers.IntegerField(allow_null=True)
    field = serializers.CharField()
    error = serializers.CharField()


class NeuronpediaReportSerializer(serializers.Serializer):
    files = serializers.IntegerField()
    features = serializers.IntegerField()
    replaced = serializers.IntegerField(help_text="features imported before, whose examples and stats were replaced")
    examples = serializers.IntegerField()
    contexts_created = serializers.IntegerField()
    labels_created = serializers.IntegerField()
    labels_updated = serializers.IntegerField()
    labels_unchanged = serializers.IntegerField()
    model = serializers.CharField()
    source = serializers.CharField()
    run_id = serializers.IntegerField(allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField())
    errors = ImportErrorSerializer(many=True)
    dry_run = serializers.BooleanField()
    applied = serializers.BooleanField()


class NeuronpediaImportApi(APIView):
    """Neuronpedia upload batches (``batch-N.json`` of one SAE) as models, sources, units, examples,
    statistics and labels; all files or nothing. Importing the same files again changes nothing."""

    permission_classes = [ReadOrCurate]
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "model": {"type": "string", "description": "model name (default: the batch's model_id)"},
            "source": {"type": "string", "description": "source name (default: the batch's layer or sae_id)"},
            "kind": {"type": "string", "enum": Model.Kind.values},
            "dry_run": {"type": "boolean"}}, "required": ["file"]}},
        responses={200: NeuronpediaReportSerializer, 400: NeuronpediaReportSerializer},
        summary="Import Neuronpedia upload batches (curators)",
    )
    def post(self, request: Request) -> Response:
        uploads = request.FILES.getlist("file")
        if not uploads:
            raise serializers.ValidationError({"file": "send one or more batch JSON files as 'file'"})
        if len(uploads) > MAX_FILES:
            raise serializers.ValidationError({"file": f"at most {MAX_FILES} files at once"})
        data = request.data
        kind = data.get("kind") or Model.Kind.CAUSAL_LM
        dry_run = str(data.get("dry_run") or request.query_params.get("dry_run", "")).lower() in ("1", "true")
        # Each upload (capped at BROWSER_MAX_FILE_BYTES while it streamed in; spooled to disk when large)
        # is read when its turn comes: one file in memory at a time.
        report = neuronpedia_import(files=[u.file for u in uploads], names=[u.name or "" for u in uploads],
                                    user=request.user, model_name=data.get("model") or None,
                                    source_name=data.get("source") or None, model_kind=kind, dry_run=dry_run)
        return Response(report.as_dict(), status=400 if report.errors else 200)
