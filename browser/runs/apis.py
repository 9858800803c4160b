"""Runs and jobs over the API: everyone sees progress; creators and curators cancel, and only they
see a job's error (a traceback) and log."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.accounts import access
from browser.api.pagination import NewestFirstPagination
from browser.api.permissions import ReadOrCurate
from browser.runs.intervention_scores import MAX_CONTEXTS, intervention_scores_request
from browser.runs.models import Job, Run
from browser.runs.requests import harvest_request_create
from browser.runs.serializers import JobSerializer, request_user
from browser.runs.services import job_cancel
from workers.compute.config import DEFAULT_HOOKS, MAX_BATCH, MAX_K, harvest_default


class RunSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    corpus = serializers.CharField(source="corpus.name")
    sources = serializers.SerializerMethodField()
    percent = serializers.SerializerMethodField()
    shards = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = ["id", "status", "model", "corpus", "sources", "config", "config_hash", "contexts_total",
                  "contexts_done", "percent", "n_shards", "shards", "error", "job", "created", "finished"]

    def to_representation(self, run: Run) -> dict[str, Any]:
        data = super().to_representation(run)
        if not access.can_see_job_details(request_user(self.context), run.job if run.job_id else run):
            data["error"] = ""
        return data

    def get_sources(self, run: Run) -> list[str]:
        return [s.name for s in run.sources.all()]

    def get_percent(self, run: Run) -> float:
        return round(100.0 * run.contexts_done / run.contexts_total, 2) if run.contexts_total else 0.0

    def get_shards(self, run: Run) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in run.shards.values_list("status", flat=True):
            counts[status] = counts.get(status, 0) + 1
        return counts


class JobList(ListAPIView):
    serializer_class = JobSerializer
    pagination_class = NewestFirstPagination
    queryset = Job.objects.select_related("created_by").all()


class JobDetail(RetrieveAPIView):
    serializer_class = JobSerializer
    queryset = Job.objects.select_related("created_by").all()


class JobCancel(APIView):
    """Ask a job to stop: a queued one ends at once, a running one at its next progress report."""

    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(Job, pk=pk)
        if not request.user.is_authenticated:
            self.permission_denied(request, message="sign in (or send an API token) to cancel a job")
        job = job_cancel(job_id=job.pk, user=request.user)
        return Response(JobSerializer(job, context={"request": request}).data)


class RunRequestSerializer(serializers.Serializer):
    """A harvest to run: the worker creates the run (or finds the one with this configuration)."""

    model = serializers.CharField(max_length=100)
    corpus = serializers.CharField(max_length=100)
    hooks = serializers.CharField(max_length=500, default=DEFAULT_HOOKS,
                                  help_text="comma-separated hook points or globs, or 'none'")
    saes = serializers.ListField(child=serializers.CharField(max_length=100), max_length=64, default=list)
    k = serializers.IntegerField(min_value=1, max_value=MAX_K, default=harvest_default("k"))
    batch_size = serializers.IntegerField(min_value=1, max_value=MAX_BATCH, default=harvest_default("batch_size"))
    shard_contexts = serializers.IntegerField(min_value=1, max_value=10_000_000,
                                              default=harvest_default("shard_contexts"))
    device = serializers.RegexField(r"^(auto|cpu|cuda(:\d+)?)$", default=harvest_default("device"))
    dtype = serializers.ChoiceField(["float32", "bfloat16", "float16"], default=harvest_default("dtype"))
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=harvest_default("seed"))
    include_special = serializers.BooleanField(default=False)
    corr_stride = serializers.IntegerField(
        min_value=0, max_value=1000, default=harvest_default("corr_stride"),
        help_text="correlation sums (SAE latents x neurons of their hook) over every n-th token; 0: none")


class RunList(ListAPIView):
    serializer_class = RunSerializer
    pagination_class = NewestFirstPagination
    permission_classes = [ReadOrCurate]
    queryset = Run.objects.select_related("model", "corpus", "job").prefetch_related("sources").all()

    @extend_schema(request=RunRequestSerializer, responses={202: JobSerializer})
    def post(self, request: Request) -> Response:
        data = RunRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = harvest_request_create(user=request.user, request=dict(data.validated_data))
        return Response(JobSerializer(job, context={"request": request}).data, status=202)


class RunDetail(RetrieveAPIView):
    serializer_class = RunSerializer
    queryset = Run.objects.select_related("model", "corpus", "job").prefetch_related("sources").all()

    def get_object(self) -> Any:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])


class InterventionScoresInputSerializer(serializers.Serializer):
    contexts = serializers.IntegerField(min_value=1, max_value=MAX_CONTEXTS, default=16,
                                        help_text="top and interval examples ablated per unit")


class InterventionScoresApi(APIView):
    @extend_schema(request=InterventionScoresInputSerializer, responses={202: JobSerializer},
                   operation_id="runs_intervention_scores",
                   summary="Queue intervention scores for a finished causal-LM run (curators): each unit "
                           "zero-ablated on its own examples")
    def post(self, request: Request, pk: int) -> Response:
        run = get_object_or_404(Run.objects.select_related("model"), pk=pk)
        if not request.user.is_authenticated:
            self.permission_denied(request, message="sign in (or send an API token) to score a run")
        data = InterventionScoresInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = intervention_scores_request(user=request.user, run=run, contexts=data.validated_data["contexts"])
        return Response(JobSerializer(job, context={"request": request}).data, status=202)
