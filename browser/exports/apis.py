"""Streamed label-dataset exports and exports in peers' formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.catalog.models import Unit
from browser.exports import formats
from browser.exports.lines import json_lines
from browser.exports.records import neuron_record, neuronpedia_explanations
from browser.exports.selectors import SCHEMA_VERSION, dataset_card, export_rows
from browser.exports.stream import label_batches
from browser.graphs.selectors import graph_get, graph_unit_ids
from browser.labels.models import LabelRevision
from browser.labels.selectors import label_list
from browser.labels.serializers import label_filters

FILTERS = [
    OpenApiParameter("model", str), OpenApiParameter("source", str), OpenApiParameter("author", str),
    OpenApiParameter("updated_since", str, description="ISO 8601: only labels updated since (incremental sync)"),
    OpenApiParameter("machine", bool),
    OpenApiParameter("graph", int, description="only the labels of an attribution graph's nodes (its units)"),
]
MAX_TOP_EXAMPLES = 32
CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8",
                 "parquet": "application/vnd.apache.parquet"}


def _filters(params: Any) -> dict[str, Any]:
    """The label filters, plus ``graph``: the units that are nodes of that attribution graph."""
    filters = label_filters(params)
    raw = params.get("graph")
    if raw not in (None, ""):
        if not str(raw).isdigit():
            raise serializers.ValidationError({"graph": "a graph id"})
        filters["units"] = graph_unit_ids(graph_get(pk=int(raw)))
    return filters


def _top_examples(params: Any) -> int:
    raw = params.get("top_examples", "0")
    if not raw.isdigit() or int(raw) > MAX_TOP_EXAMPLES:
        raise serializers.ValidationError({"top_examples": f"an integer from 0 to {MAX_TOP_EXAMPLES}"})
    return int(raw)


class LabelExport(APIView):
    """Every label matching the filters, streamed as JSONL, CSV or Parquet (memory flat in rows)."""

    @extend_schema(parameters=[*FILTERS, OpenApiParameter("top_examples", int,
                                                          description="add the texts of the top N contexts")],
                   responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, fmt: str) -> StreamingHttpResponse:
        filters = _filters(request.query_params)
        top_examples = _top_examples(request.query_params)
        rows = export_rows(filters=filters, top_examples=top_examples)
        metadata = {"dataset_card": json.dumps(dataset_card(filters=filters, count=-1)),
                    "schema_version": str(SCHEMA_VERSION)}
        body: Iterator[bytes]
        if fmt == "csv":
            body = formats.csv_rows(rows)
        elif top_examples:  # example texts need the vocabulary: rows are built in Python
            body = formats.jsonl(rows) if fmt == "jsonl" else formats.parquet(rows, metadata=metadata)
        elif fmt == "jsonl":
            body = json_lines(filters=filters)
        else:
            body = formats.parquet_from_batches(label_batches(filters=filters), metadata=metadata)
        response = StreamingHttpResponse(body, content_type=CONTENT_TYPES[fmt])
        response["Content-Disposition"] = f'attachment; filename="labels.{fmt}"'
        response["X-Schema-Version"] = str(SCHEMA_VERSION)
        return response


class DatasetCard(APIView):
    @extend_schema(parameters=FILTERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        filters = _filters(request.query_params)
        return Response(dataset_card(filters=filters, count=label_list(**filters).count()))


class DeletedLabels(APIView):
    """Labels deleted since a time, so an incremental sync can drop them too."""

    @extend_schema(parameters=[OpenApiParameter("updated_since", str)], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        since = label_filters(request.query_params).get("updated_since")
        deleted = LabelRevision.objects.filter(action=LabelRevision.Action.DELETE).select_related(
            "unit__source__model", "author").order_by("at", "id")
        if since is not None:
            deleted = deleted.filter(at__gte=since)
        return Response({"deleted": [
            {"label_id": (r.before or {}).get("label_id"), "author": r.author.username, "at": r.at,
             "unit": f"{r.unit.source.model.name}/{r.unit.source.name}/{r.unit.index}"}
            for r in deleted[:100_000]]})


class NeuronpediaExport(APIView):
    @extend_schema(parameters=FILTERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> StreamingHttpResponse:
        filters = _filters(request.query_params)

        def body() -> Iterator[bytes]:
            yield b"["
            for n, row in enumerate(neuronpedia_explanations(filters=filters)):
                yield (b"," if n else b"") + json.dumps(row, ensure_ascii=False).encode()
            yield b"]"

        return StreamingHttpResponse(body(), content_type="application/json")


class NeuronRecordExport(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, model: str, source: str, index: int) -> Response:
        unit = get_object_or_404(Unit.objects.select_related("source__model"), source__model__name=model,
                                 source__name=source, index=index)
        return Response(neuron_record(unit))
