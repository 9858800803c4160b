"""The cap on uploaded files. Django's DATA_UPLOAD_MAX_MEMORY_SIZE limits form fields only, never
files, so two checks here: the declared Content-Length before anything is read (middleware), and the
bytes actually received, counted while the upload streams to disk (a request without a length, or
one file over the per-file cap). Both answer 413 in the API's error shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.exceptions import APIException


class UploadTooLarge(APIException):
    status_code = 413
    default_code = "too_large"
    default_detail = "the upload is too large"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def request_cap() -> int:
    return int(settings.BROWSER_MAX_REQUEST_BYTES)


def file_cap() -> int:
    return int(settings.BROWSER_MAX_FILE_BYTES)


def too_large_response(exc: UploadTooLarge) -> JsonResponse:
    return JsonResponse({"error": {"status": 413, "code": "too_large", "message": str(exc.detail)}}, status=413)


class CappedUploadHandler(FileUploadHandler):
    """First of FILE_UPLOAD_HANDLERS: counts every chunk on its way to the handlers that store it."""

    def handle_raw_input(self, input_data: Any, META: Any, content_length: int, boundary: Any,
                         encoding: str | None = None) -> None:
        if content_length and content_length > request_cap():
            raise UploadTooLarge(f"the request is {_mib(content_length)}; at most {_mib(request_cap())} "
                                 "(BROWSER_MAX_REQUEST_BYTES)")
        self.total = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.in_file = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.total = getattr(self, "total", 0) + len(raw_data)
        self.in_file = getattr(self, "in_file", 0) + len(raw_data)
        if self.in_file > file_cap():
            raise UploadTooLarge(f"{self.file_name} is over {_mib(file_cap())} (BROWSER_MAX_FILE_BYTES)")
        if self.total > request_cap():
            raise UploadTooLarge(f"the files are over {_mib(request_cap())} in all (BROWSER_MAX_REQUEST_BYTES)")
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class UploadCapMiddleware:
    """413 for a declared body over the cap, before the body is read; and the same answer when the
    streaming count (CappedUploadHandler) stops an upload inside a view that is not an API view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        if declared.isdigit() and int(declared) > request_cap():
            return too_large_response(UploadTooLarge(
                f"the request is {_mib(int(declared))}; at most {_mib(request_cap())} (BROWSER_MAX_REQUEST_BYTES)"))
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        return too_large_response(exc) if isinstance(exc, UploadTooLarge) else None
