"""Bulk label import refuses strings PostgreSQL cannot store (a NUL, a lone UTF-16 surrogate) in any
field with a 400 that names the row, like every other bad input, through the API and the command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Unit
from browser.labels.models import Label
from tests.conftest import Cast

UID = "toyish/blocks.1.mlp.hook_post/{}"
GOOD = {"unit": UID.format(0), "text": "fine"}
BAD_ROWS = {
    "nul in unit": {"unit": UID.format(1) + "\x00", "text": "x"},
    "nul in model name": {"unit": "toy\x00ish/blocks.1.mlp.hook_post/1", "text": "x"},
    "surrogate in unit": {"unit": "toyish\ud800/blocks.1.mlp.hook_post/1", "text": "x"},
    "surrogate in text": {"unit": UID.format(1), "text": "half a pair \ud83d here"},
    "surrogate in tags": {"unit": UID.format(1), "text": "x", "tags": ["ok", "bad\udc00"]},
    "nul in text": {"unit": UID.format(1), "text": "a\x00b"},
}


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode()  # json escapes them: \u0000, \ud83d


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_api_import_answers_400_with_the_line(cast: Cast, units: list[Unit], case: str) -> None:
    api = cast.client("owner")
    upload = SimpleUploadedFile("labels.jsonl", _jsonl([GOOD, BAD_ROWS[case]]))
    response = api.post("/api/v1/labels/import/", {"file": upload})
    assert response.status_code == 400, response.content
    assert [e["line"] for e in response.json()["errors"]] == [2]
    as_list = api.post("/api/v1/labels/import/", json.dumps([GOOD, BAD_ROWS[case]]), content_type="application/json")
    assert as_list.status_code == 400 and [e["line"] for e in as_list.json()["errors"]] == [2]
    assert Label.objects.count() == 0


def test_csv_with_a_nul_in_the_unit_id(cast: Cast, units: list[Unit]) -> None:
    raw = f"unit,text\n{UID.format(0)},fine\ntoyish\x00/blocks.1.mlp.hook_post/1,nul\n".encode()
    response = cast.client("owner").post("/api/v1/labels/import/", {"file": SimpleUploadedFile("l.csv", raw)})
    assert response.status_code == 400, response.content
    assert [e["line"] for e in response.json()["errors"]] == [2] and Label.objects.count() == 0


def test_command_reports_the_line(cast: Cast, units: list[Unit], tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(_jsonl([GOOD, BAD_ROWS["surrogate in text"], BAD_ROWS["nul in unit"]]))
    err = io.StringIO()
    with pytest.raises(CommandError, match="2 bad row"):
        call_command("import_labels", str(path), user="owner", stderr=err)
    assert "line 2:" in err.getvalue() and "line 3:" in err.getvalue() and Label.objects.count() == 0
