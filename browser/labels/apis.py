"""Labels over the API: list (filters), create or edit your own, moderate, history, bulk import,
and the labeling queue."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.api.errors import Conflict
from browser.api.permissions import ReadOrLabel
from browser.catalog.uids import unit_by_uid, unit_uid
from browser.labels.models import Label, LabelRevision
from browser.labels.selectors import label_list, queue_next
from browser.labels.serializers import (
    ImportReportSerializer,
    LabelEditSerializer,
    LabelSerializer,
    LabelWriteSerializer,
    RevisionSerializer,
    label_filters,
)
from browser.labels.services import LabelConflict, label_delete, label_save, labels_import

FILTER_PARAMS = [
    OpenApiParameter("model", str), OpenApiParameter("source", str), OpenApiParameter("author", str),
    OpenApiParameter("updated_since", str, description="ISO 8601; only labels updated since"),
    OpenApiParameter("unit", str, description="model/source/index"),
    OpenApiParameter("machine", bool),
]
MAX_IMPORT_BYTES = 20 * 1024 * 1024


def _unit_or_400(uid: str) -> Any:
    try:
        return unit_by_uid(uid)
    except ValidationError as exc:
        raise serializers.ValidationError({"unit": exc.messages}) from None


def _conflict(exc: LabelConflict) -> Conflict:
    return Conflict(str(exc))


class LabelListCreate(ListAPIView):
    permission_classes = [ReadOrLabel]
    serializer_class = LabelSerializer

    def get_queryset(self) -> Any:
        filters = label_filters(self.request.query_params)
        uid = self.request.query_params.get("unit")
        return label_list(**filters, unit=_unit_or_400(uid) if uid else None)

    @extend_schema(parameters=FILTER_PARAMS)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=LabelWriteSerializer, responses={200: LabelSerializer, 201: LabelSerializer})
    def post(self, request: Request) -> Response:
        data = LabelWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        unit = _unit_or_400(values.pop("unit"))
        existed = Label.objects.filter(unit=unit, author=request.user).exists()
        try:
            label = label_save(unit=unit, user=request.user, **values)
        except LabelConflict as exc:
            raise _conflict(exc) from None
        return Response(LabelSerializer(label).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED)


class LabelDetail(APIView):
    permission_classes = [ReadOrLabel]

    def _label(self, pk: int) -> Label:
        return get_object_or_404(Label.objects.select_related("unit__source__model", "author"), pk=pk)

    @extend_schema(responses=LabelSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(LabelSerializer(self._label(pk)).data)

    @extend_schema(request=LabelEditSerializer, responses=LabelSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        label = self._label(pk)
        data = LabelEditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = {"text": label.text, "tags": label.tags, "confidence": label.confidence, **data.validated_data}
        try:
            label = label_save(unit=label.unit, user=request.user, author=label.author, **values)
        except LabelConflict as exc:
            raise _conflict(exc) from None
        return Response(LabelSerializer(label).data)

    @extend_schema(parameters=[OpenApiParameter("revision", int, description="the revision you read")],
                   responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        revision = request.query_params.get("revision", "")
        if revision and not revision.isdigit():
            raise serializers.ValidationError({"revision": "an integer"})
        try:
            label_delete(label=self._label(pk), user=request.user, revision=int(revision) if revision else None)
        except LabelConflict as exc:
            raise _conflict(exc) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class LabelRevisions(APIView):
    @extend_schema(responses=RevisionSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        label = get_object_or_404(Label, pk=pk)
        revisions = LabelRevision.objects.filter(unit_id=label.unit_id, author_id=label.author_id).select_related(
            "author", "editor").order_by("at", "id")
        return Response(RevisionSerializer(revisions, many=True).data)


def parse_label_file(name: str, raw: bytes) -> list[dict[str, Any]]:
    """Rows of a CSV (header: unit,text[,tags][,confidence]) or JSONL upload."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise serializers.ValidationError({"file": "the file is not UTF-8 text"}) from None
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"unit", "text"} <= set(reader.fieldnames):
            raise serializers.ValidationError({"file": "a CSV needs the columns unit and text"})
        return [dict(row) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise serializers.ValidationError({"file": f"line {number}: not JSON ({exc.msg})"}) from None
            if not isinstance(row, dict):
                raise serializers.ValidationError({"file": f"line {number}: not a JSON object"})
            rows.append(row)
    return rows


class LabelImport(APIView):
    """Bulk labels from a CSV or JSONL file (or a JSON list); all rows or none. ``?dry_run=true``
    validates only."""

    permission_classes = [ReadOrLabel]
    parser_classes = [MultiPartParser, JSONParser]

    @extend_schema(request={"multipart/form-data": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}}}, responses={200: ImportReportSerializer,
                                                                    400: ImportReportSerializer})
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("file")
        if upload is not None:
            if upload.size is not None and upload.size > MAX_IMPORT_BYTES:
                raise serializers.ValidationError({"file": f"the file is over {MAX_IMPORT_BYTES // 2**20} MiB"})
            rows = parse_label_file(upload.name or "", upload.read())
        elif isinstance(request.data, list):
            rows = request.data
        else:
            raise serializers.ValidationError({"file": "send a CSV or JSONL file as 'file', or a JSON list"})
        if not all(isinstance(row, dict) for row in rows):
            raise serializers.ValidationError({"file": "every row must be an object"})
        report = labels_import(rows=rows, user=request.user,
                               dry_run=request.query_params.get("dry_run") in ("1", "true"))
        return Response(report.as_dict(), status=400 if report.errors else 200)


class QueueNext(APIView):
    @extend_schema(parameters=[OpenApiParameter(p, str) for p in ("model", "source", "kind", "after")]
                   + [OpenApiParameter("layer", int)],
                   responses={200: {"type": "object", "properties": {"unit": {"type": "string", "nullable": True}}}})
    def get(self, request: Request) -> Response:
        params = request.query_params
        layer = params.get("layer", "")
        if layer and not layer.lstrip("-").isdigit():
            raise serializers.ValidationError({"layer": "an integer"})
        after = _unit_or_400(params["after"]) if params.get("after") else None
        unit = queue_next(model=params.get("model"), source=params.get("source"), kind=params.get("kind"),
                          layer=int(layer) if layer else None, after=after)
        return Response({"unit": unit_uid(unit) if unit else None})
