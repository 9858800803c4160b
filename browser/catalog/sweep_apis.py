"""The JSON twin of the source page's sweep section (the same selector, browser/catalog/sweep_selectors.py)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.catalog.models import Model
from browser.catalog.selectors import source_get
from browser.catalog.sweep_selectors import sweep_rows


class SweepSaeSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="the SAE's source name")
    sweep = serializers.IntegerField(help_text="the sweep's job id")
    architecture = serializers.CharField()
    width = serializers.IntegerField()
    sparsity = serializers.FloatField(help_text="k (TopK family), L1 (relu) or L0 coefficient (jumprelu)")
    quality = serializers.DictField(help_text="mcc, mmcs, f1, ... (synthetic sets); fvu, l0, loss_recovered, ...")


class SweepsSerializer(serializers.Serializer):
    synthetic = serializers.BooleanField()
    true_l0 = serializers.FloatField(allow_null=True)
    saes = SweepSaeSerializer(many=True)


class SweepsApi(APIView):
    @extend_schema(responses=SweepsSerializer, summary="The SAE sweeps at a source's hook point, with their quality")
    def get(self, request: Request, model: str, source: str) -> Response:
        src = source_get(model_name=model, source_name=source)
        keys = ("name", "sweep", "architecture", "width", "sparsity")
        saes = [{**{k: row[k] for k in keys}, "quality": {k: v for k, v in row.items() if k not in keys}}
                for row in sweep_rows(src)]
        synthetic = src.model.kind == Model.Kind.SYNTHETIC
        true_l0 = src.model.config.get("true_l0") if synthetic else None
        return Response(SweepsSerializer({"synthetic": synthetic, "true_l0": true_l0, "saes": saes}).data)
