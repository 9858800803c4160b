"""One error format for the whole API: ``{"error": {"status", "code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


class Conflict(exceptions.APIException):
    status_code = 409
    default_code = "conflict"
    default_detail = "the object changed since you read it"


def _message(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(_message(d) for d in detail)
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_message(v)}" for k, v in detail.items())
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    body: dict[str, Any] = {"status": response.status_code,
                            "code": getattr(exc, "default_code", "error"), "message": _message(detail)}
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        body["code"] = codes if isinstance(codes, str) else getattr(exc, "default_code", "invalid")
        if isinstance(detail, dict) and not ("detail" in detail and len(detail) == 1):
            body["fields"] = detail
        elif isinstance(detail, dict):
            body["message"] = _message(detail["detail"])
    response.data = {"error": body}
    return response
