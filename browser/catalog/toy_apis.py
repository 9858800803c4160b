"""The toy-model page's JSON twin (the same selector as the page, browser/catalog/toy_selectors.py)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.catalog.models import Model
from browser.catalog.selectors import model_get
from browser.catalog.toy_selectors import toy_view


class ToySerializer(serializers.Serializer):
    model = serializers.CharField(source="model.name")
    n_features = serializers.IntegerField(allow_null=True)
    n_dims = serializers.IntegerField(allow_null=True)
    gram = serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), allow_null=True,
                                 help_text="W^T W, [n_features][n_features]: feature by feature")
    dimensionality = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    dims_per_feature = serializers.FloatField(allow_null=True, help_text="D* = m / ||W||_F^2")
    extra = serializers.DictField()


class ToyApi(APIView):
    @extend_schema(responses=ToySerializer, summary="A toy model's W^T W and feature dimensionalities")
    def get(self, request: Request, model: str) -> Response:
        m = model_get(name=model)
        if m.kind != Model.Kind.TOY:
            raise Http404(f"{m.name} is not a toy model")
        return Response(ToySerializer(toy_view(m)).data)
