"""JSON twins of the catalog pages, under /api/v1/: each calls the selector its page calls."""

from __future__ import annotations

from typing import Any

import numpy as np
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.api.compute import CanCompute, ComputeThrottle
from browser.catalog.fragments import unit_run_data
from browser.catalog.page_selectors import UnitDetail, compare, overview, unit_detail
from browser.catalog.probe import ProbeError, probe_unit
from browser.catalog.selectors import (
    PAGE_SIZE,
    FilterError,
    model_list,
    parse_unit_filters,
    source_get,
    source_list,
    unit_by_id,
    unit_get,
    unit_stats_run_created,
)
from browser.catalog.uids import unit_uid
from browser.runs.serializers import JobSerializer
from browser.search.selectors import unit_list_page


# ---- serializers (output shapes; they also make the OpenAPI schema) ----------------------------
class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    architecture = serializers.CharField()
    n_layers = serializers.IntegerField()
    d_model = serializers.IntegerField()
    d_mlp = serializers.IntegerField()
    vocab_size = serializers.IntegerField()


class SourceSerializer(serializers.Serializer):
    id = serializers.SerializerMethodField(help_text="model/source")
    model = serializers.CharField(source="model.name")
    name = serializers.CharField()
    hook_point = serializers.CharField()
    layer = serializers.IntegerField()
    kind = serializers.CharField()
    n_units = serializers.IntegerField()

    def get_id(self, obj: Any) -> str:
        return f"{obj.model.name}/{obj.name}"


class DistributionSerializer(serializers.Serializer):
    name = serializers.CharField()
    counts = serializers.ListField(child=serializers.IntegerField())
    edges = serializers.ListField(child=serializers.FloatField())


class SourceSummarySerializer(serializers.Serializer):
    source = SourceSerializer()
    unit_count = serializers.IntegerField()
    dead = serializers.IntegerField()
    distributions = DistributionSerializer(many=True)


class RunSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    model = serializers.CharField(source="model.name")
    corpus = serializers.CharField(source="corpus.name")
    status = serializers.CharField()
    contexts_done = serializers.IntegerField()
    contexts_total = serializers.IntegerField()


class CorpusSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    n_documents = serializers.IntegerField()
    n_contexts = serializers.IntegerField()
    n_tokens = serializers.IntegerField()
    context_length = serializers.IntegerField()


class OverviewSerializer(serializers.Serializer):
    models = ModelSerializer(many=True)
    corpora = CorpusSerializer(many=True)
    sources = SourceSummarySerializer(many=True)
    runs = RunSummarySerializer(many=True)
    jobs = JobSerializer(many=True)


class UnitRowSerializer(serializers.Serializer):
    id = serializers.SerializerMethodField(help_text="stable id model/source/index")
    model = serializers.CharField(source="source.model.name")
    source = serializers.CharField(source="source.name")
    index = serializers.IntegerField()
    layer = serializers.IntegerField()
    kind = serializers.CharField()
    density = serializers.FloatField(allow_null=True)
    max_activation = serializers.FloatField(allow_null=True)
    mean_activation = serializers.FloatField(allow_null=True)
    top_token = serializers.CharField()
    dead = serializers.BooleanField()
    label_count = serializers.IntegerField()
    labels = serializers.SerializerMethodField()
    sort_value = serializers.FloatField(allow_null=True, required=False, default=None)

    def get_id(self, obj: Any) -> str:
        return unit_uid(obj)

    def get_labels(self, obj: Any) -> list[str]:
        return [label.text for label in obj.labels.all()]


class UnitPageSerializer(serializers.Serializer):
    next = serializers.CharField(allow_null=True, help_text="URL of the next page")
    previous = serializers.CharField(allow_null=True, help_text="URL of the previous page")
    results = UnitRowSerializer(many=True)


class ExampleSerializer(serializers.Serializer):
    kind = serializers.CharField()
    bucket = serializers.IntegerField()
    rank = serializers.IntegerField()
    max_value = serializers.FloatField()
    max_pos = serializers.IntegerField()
    token_ids = serializers.ListField(child=serializers.IntegerField())
    tokens = serializers.ListField(child=serializers.CharField(trim_whitespace=False))
    values = serializers.ListField(child=serializers.FloatField())

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return instance.as_dict()


class StatsSerializer(serializers.Serializer):
    n_tokens = serializers.IntegerField()
    fire_count = serializers.IntegerField()
    density = serializers.FloatField()
    mean = serializers.FloatField()
    max = serializers.FloatField()
    hist = serializers.SerializerMethodField(help_text="counts per bin of the run's fixed log-spaced bin grid")
    hist_stride = serializers.IntegerField()

    def get_hist(self, obj: Any) -> list[int]:
        return np.frombuffer(bytes(obj.hist), dtype="<i8").tolist()


class ScoreSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    value = serializers.FloatField()
    help = serializers.CharField()
    details = serializers.DictField()


class RelationSerializer(serializers.Serializer):
    kind = serializers.CharField()
    rank = serializers.IntegerField()
    other = serializers.SerializerMethodField(help_text="stable id of the related unit")
    value = serializers.FloatField()

    def get_other(self, obj: Any) -> str:
        return unit_uid(obj.other)


class RelationGroupSerializer(serializers.Serializer):
    kind = serializers.CharField()
    title = serializers.CharField()
    help = serializers.CharField()
    rows = RelationSerializer(many=True)


class LabelBriefSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    author = serializers.CharField(source="author.username")
    text = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    confidence = serializers.FloatField(allow_null=True)
    machine = serializers.BooleanField()
    revision = serializers.IntegerField()
    updated = serializers.DateTimeField()


class IntervalSerializer(serializers.Serializer):
    low = serializers.FloatField()
    high = serializers.FloatField()
    examples = ExampleSerializer(many=True)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        (low, high), members = instance
        return {"low": low, "high": high, "examples": [e.as_dict() for e in members]}


class EffectSerializer(serializers.Serializer):
    token = serializers.CharField(trim_whitespace=False)
    value = serializers.FloatField()


class EffectsSerializer(serializers.Serializer):
    up = serializers.ListField(child=EffectSerializer())
    down = serializers.ListField(child=EffectSerializer())

    def to_representation(self, instance: Any) -> dict[str, Any]:
        return {side: [{"token": t, "value": v} for t, v in instance.get(side, [])] for side in ("up", "down")}


class UnitDetailSerializer(serializers.Serializer):
    id = serializers.CharField()
    unit = UnitRowSerializer()
    stats = StatsSerializer(allow_null=True)
    top = ExampleSerializer(many=True)
    intervals = IntervalSerializer(many=True)
    random = ExampleSerializer(many=True)
    logit_effects = EffectsSerializer(source="effects")
    scores = ScoreSerializer(many=True)
    relations = RelationGroupSerializer(many=True)
    labels = LabelBriefSerializer(many=True)
    prev = serializers.IntegerField(allow_null=True, help_text="index of the previous unit of the source")
    next = serializers.IntegerField(allow_null=True, help_text="index of the next unit of the source")

    RUN_FIELDS = ("stats", "top", "intervals", "random")  # what only the unit's stats run changes

    def to_representation(self, instance: UnitDetail) -> dict[str, Any]:
        """As every serializer does, but the run's parts (statistics, examples) come from the cache
        (browser/catalog/fragments.py): serializing thousands of per-token values each time was
        most of the answer's CPU."""
        run = unit_run_data(instance, unit_stats_run_created(instance.unit),
                            lambda: {name: _represent(self.fields[name], instance) for name in self.RUN_FIELDS})
        return {f.field_name: run[f.field_name] if f.field_name in run else _represent(f, instance)
                for f in self._readable_fields}


def _represent(field: serializers.Field, instance: Any) -> Any:
    """One field of ``instance`` as ``Serializer.to_representation`` gives it (None stays None)."""
    attribute = field.get_attribute(instance)
    return None if attribute is None else field.to_representation(attribute)


class CompareColumnSerializer(serializers.Serializer):
    id = serializers.CharField()
    unit = UnitRowSerializer()
    relation = RelationSerializer(allow_null=True)
    top = ExampleSerializer(many=True)


class CompareSerializer(serializers.Serializer):
    explanation = serializers.CharField()
    columns = CompareColumnSerializer(many=True)


class ProbeInputSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=2000, trim_whitespace=False)


class ProbeSerializer(serializers.Serializer):
    tokens = serializers.ListField(child=serializers.CharField(trim_whitespace=False))
    token_ids = serializers.ListField(child=serializers.IntegerField())
    values = serializers.ListField(child=serializers.FloatField())
    max_pos = serializers.IntegerField()
    max_value = serializers.FloatField()


# ---- views -------------------------------------------------------------------------------------
FILTER_PARAMS = [
    OpenApiParameter("q", str, description="full-text search over labels and top tokens (websearch syntax)"),
    OpenApiParameter("mode", str, enum=["semantic"], description="semantic: q ranked by meaning (MiniLM), merged "
                     "with the full-text hits, filters applied; one ranked page, no cursor"),
    OpenApiParameter("source", str, description="model/source"),
    OpenApiParameter("model", str), OpenApiParameter("layer", int),
    OpenApiParameter("kind", str, enum=["neurons", "sae", "transcoder"]),
    OpenApiParameter("density_min", float), OpenApiParameter("density_max", float),
    OpenApiParameter("score", str, many=True, description="name:min:max (bounds optional), repeatable"),
    OpenApiParameter("labeled", bool), OpenApiParameter("label", str, description="label text contains"),
    OpenApiParameter("top_token", str),
    OpenApiParameter("sort", str, description="index, density, max_activation, mean_activation or score:NAME; "
                     "prefix - for descending. Units without the value are left out."),
    OpenApiParameter("cursor", str), OpenApiParameter("page_size", int, description="at most 500"),
]


def _page_size(request: Request) -> int:
    raw = request.query_params.get("page_size", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else PAGE_SIZE


def _units_response(request: Request, **fixed: str) -> Response:
    try:
        filters = parse_unit_filters(request.query_params, **fixed)
        page = unit_list_page(filters, cursor=request.query_params.get("cursor") or None, size=_page_size(request))
    except FilterError as exc:
        raise ValidationError({"filters": [str(exc)]}) from None

    def link(cursor: str | None) -> str | None:
        if cursor is None:
            return None
        query = request.query_params.copy()
        query["cursor"] = cursor
        return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")

    return Response(UnitPageSerializer({"next": link(page.next), "previous": link(page.previous),
                                        "results": page.units}).data)


class OverviewApi(APIView):
    @extend_schema(responses=OverviewSerializer, summary="Models, corpora, sources (with distributions), runs, jobs")
    def get(self, request: Request) -> Response:
        # No request in the context: like the home page, the overview shows every job's progress and no
        # one's error or log (those are at /api/v1/jobs/<id>/ for the creator and curators).
        return Response(OverviewSerializer(overview()).data)


class ModelListApi(APIView):
    @extend_schema(responses=ModelSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(ModelSerializer(model_list(), many=True).data)


class SourceListApi(APIView):
    @extend_schema(responses=SourceSummarySerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = [{"source": s, "unit_count": s.unit_count, "dead": 0, "distributions": []}  # type: ignore[attr-defined]
                for s in source_list()]
        return Response(SourceSummarySerializer(rows, many=True).data)


class SourceUnitsApi(APIView):
    @extend_schema(parameters=FILTER_PARAMS, responses=UnitPageSerializer,
                   summary="The units of one source (the source page), filtered and sorted")
    def get(self, request: Request, model: str, source: str) -> Response:
        source_get(model_name=model, source_name=source)
        return _units_response(request, model=model, source=source)


class UnitListApi(APIView):
    @extend_schema(parameters=FILTER_PARAMS, responses=UnitPageSerializer, operation_id="units_list",
                   summary="Units across sources, filtered, searched and sorted (cursor pagination)")
    def get(self, request: Request) -> Response:
        return _units_response(request)


class UnitDetailApi(APIView):
    @extend_schema(responses=UnitDetailSerializer, operation_id="units_detail",
                   summary="One unit: stats, examples with tokens and per-token values, labels, scores, relations")
    def get(self, request: Request, model: str, source: str, index: int) -> Response:
        unit = unit_get(model_name=model, source_name=source, index=index)
        return Response(UnitDetailSerializer(unit_detail(unit)).data)


class UnitProbeApi(APIView):
    permission_classes = [CanCompute]
    throttle_classes = [ComputeThrottle]

    @extend_schema(request=ProbeInputSerializer, responses={200: ProbeSerializer, 422: OpenApiTypes.OBJECT},
                   summary="The unit's per-token activations on your own text (computed by a worker; "
                           "signed-in users, throttled at BROWSER_COMPUTE_RATE)")
    def post(self, request: Request, model: str, source: str, index: int) -> Response:
        unit = unit_get(model_name=model, source_name=source, index=index)
        data = ProbeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            result = probe_unit(unit=unit, text=data.validated_data["text"])
        except ProbeError as exc:
            return Response({"error": {"status": 422, "code": "probe_failed", "message": str(exc)}}, status=422)
        return Response(ProbeSerializer(result).data)


class CompareApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("a", str, required=True, description="model/source/index"),
                               OpenApiParameter("b", str, description="model/source/index; empty: a's related units")],
                   responses=CompareSerializer)
    def get(self, request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not a:
            raise ValidationError({"a": ["give a unit id model/source/index"]})
        return Response(CompareSerializer(compare(unit_by_id(a), unit_by_id(b) if b else None)).data)
