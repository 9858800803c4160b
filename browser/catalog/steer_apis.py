"""``/api/v1/steer/``: POST a steering request as JSON (or GET it as the page's query string); the
answer is computed by a worker and awaited, under the compute rules of browser/api/compute.py."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.api.compute import CanCompute, ComputeThrottle
from browser.catalog.steer import (
    SteerError,
    SteerRequest,
    SteerResult,
    steer_request,
    steer_request_from_query,
    steer_run,
    unit_edit,
)


class EditInputSerializer(serializers.Serializer):
    unit = serializers.CharField(help_text="model/source/index")
    op = serializers.CharField(default="steer", help_text="zero, mean, clamp, scale or steer")
    value = serializers.JSONField(required=False, allow_null=True,
                                 help_text="clamp value, scale factor or steering coefficient")
    positions = serializers.ListField(child=serializers.IntegerField(), required=False,
                                      help_text="token positions from 0; empty: every position")


class SteerInputSerializer(serializers.Serializer):
    prompt = serializers.CharField(trim_whitespace=False)
    units = EditInputSerializer(many=True)
    n_tokens = serializers.JSONField(default=16)
    temperature = serializers.JSONField(default=0)
    seed = serializers.JSONField(default=0)


def _parsed(request: Request) -> SteerRequest:
    try:
        if request.method == "GET":
            return steer_request_from_query(request.query_params, request.query_params.getlist("unit"))
        data = SteerInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        edits = [unit_edit(uid=e["unit"], op=e["op"], value=e.get("value"), positions=e.get("positions"))
                 for e in v["units"]]
        return steer_request(prompt=v["prompt"], edits=edits, n_tokens=v["n_tokens"], temperature=v["temperature"],
                             seed=v["seed"])
    except SteerError as exc:
        raise ValidationError({"detail": str(exc)}) from None


def _body(result: SteerResult, request: Request) -> dict[str, Any]:
    raw = result.raw
    return {
        "request": {"prompt": result.request.prompt, "units": [e.spec for e in result.request.edits],
                    "n_tokens": result.request.n_tokens, "temperature": result.request.temperature,
                    "seed": result.request.seed},
        "share_url": request.build_absolute_uri(f"{reverse('steer')}?{result.request.query()}"),
        "kl": result.kl, "prompt_ids": raw["prompt_ids"],
        "top_plain": [{"token": t, "p": p} for t, p in result.top_plain],
        "top_steered": [{"token": t, "p": p} for t, p in result.top_steered],
        "up": [{"token": t, "p_plain": p, "p_steered": q} for t, p, q in result.up],
        "down": [{"token": t, "p_plain": p, "p_steered": q} for t, p, q in result.down],
        "plain": raw["plain"], "steered": raw["steered"],
    }


class SteerApi(APIView):
    permission_classes = [CanCompute]
    throttle_classes = [ComputeThrottle]

    def _answer(self, request: Request) -> Response:
        parsed = _parsed(request)
        try:
            result = steer_run(parsed)
        except SteerError as exc:
            return Response({"error": {"status": 422, "code": "steer_failed", "message": str(exc)}}, status=422)
        return Response(_body(result, request))

    @extend_schema(request=SteerInputSerializer, responses={200: OpenApiTypes.OBJECT, 422: OpenApiTypes.OBJECT},
                   operation_id="steer_create",
                   summary="A prompt with and without edits of units: next-token distributions and continuations "
                           "(computed by a worker; signed-in users, throttled at BROWSER_COMPUTE_RATE)")
    def post(self, request: Request) -> Response:
        return self._answer(request)

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 422: OpenApiTypes.OBJECT}, operation_id="steer_rerun",
                   summary="The same, from the steering page's query string (prompt, unit..., n, temperature, seed)")
    def get(self, request: Request) -> Response:
        return self._answer(request)
