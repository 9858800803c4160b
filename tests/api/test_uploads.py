"""Uploaded files are capped (BROWSER_MAX_FILE_BYTES a file, BROWSER_MAX_REQUEST_BYTES a request):
413 in the API's error shape, from the declared length before reading, or from the bytes counted
while the upload streams."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from browser.labels.models import Label
from tests.conftest import Cast

KIB = 1024


@pytest.fixture
def caps(settings: Any) -> None:
    settings.BROWSER_MAX_FILE_BYTES = 64 * KIB
    settings.BROWSER_MAX_REQUEST_BYTES = 256 * KIB


def _rows(n_bytes: int) -> bytes:
    line = b'{"unit": "nope/blocks.0.mlp.hook_post/0", "text": "padding padding padding"}\n'
    return line * (n_bytes // len(line) + 1)


def _assert_413(response: Any) -> None:
    assert response.status_code == 413, response.content[:300]
    error = response.json()["error"]
    assert (error["status"], error["code"]) == (413, "too_large") and "BROWSER_MAX_" in error["message"]


@pytest.mark.parametrize("url", ["/api/v1/labels/import/", "/api/v1/imports/neuronpedia/"])
def test_a_file_over_the_cap_is_413(cast: Cast, caps: None, url: str) -> None:
    big = SimpleUploadedFile("batch-0.jsonl", _rows(100 * KIB))
    _assert_413(cast.client("curator").post(url, {"file": big}))
    assert Label.objects.count() == 0


def test_files_over_the_request_cap_together_are_413_while_streaming(cast: Cast, caps: None) -> None:
    files = [SimpleUploadedFile(f"batch-{i}.json", _rows(60 * KIB)) for i in range(5)]  # each under 64 KiB
    _assert_413(cast.client("curator").post("/api/v1/imports/neuronpedia/", {"file": files}))


def test_a_declared_length_over_the_cap_is_refused_before_reading(cast: Cast, caps: None) -> None:
    response = cast.client("curator").generic("POST", "/api/v1/labels/import/", b"x" * (300 * KIB),
                                              content_type="multipart/form-data; boundary=zzz")
    _assert_413(response)


def test_under_the_caps_uploads_work(cast: Cast, caps: None) -> None:
    small = SimpleUploadedFile("l.jsonl", _rows(2 * KIB))
    response = cast.client("curator").post("/api/v1/labels/import/", {"file": small})
    assert response.status_code == 400 and response.json()["errors"][0]["line"] == 1  # no such unit: read, checked
