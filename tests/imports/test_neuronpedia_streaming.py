"""Neuronpedia batches are read one file at a time (up to 16 x 64 MiB would otherwise sit in memory
at once): the import's peak memory is a few times the largest file (measured: 3.3x), not the sum of the
files (before: 45.8 MiB for 8 files of 4 MiB)."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

from django.core.management import call_command

from tests.conftest import Cast

FILE_BYTES = 4 * 2**20
N_FILES = 8


def _write_batches(folder: Path) -> None:
    for i in range(N_FILES):
        batch = {"model_id": "gpt2-small", "layer": "6-res-jb", "sae_id": "6-res-jb",
                 "features": [{"featureIndex": i, "explanation": f"feature {i}"}],
                 "dashboard_notes": "n" * FILE_BYTES}  # a field the import does not keep
        (folder / f"batch-{i}.json").write_text(json.dumps(batch))


def test_the_import_holds_one_file_at_a_time(cast: Cast, tmp_path: Path) -> None:
    _write_batches(tmp_path)
    out = io.StringIO()
    tracemalloc.start()
    try:
        call_command("import_neuronpedia", str(tmp_path), user="curator", dry_run=True, stdout=out,
                     stderr=io.StringIO())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"would import {N_FILES} feature(s)" in out.getvalue()
    assert peak < 4 * FILE_BYTES, f"peak {peak / 2**20:.1f} MiB for {N_FILES} files of {FILE_BYTES / 2**20:.0f} MiB"


def test_large_uploads_are_read_from_their_spooled_files(cast: Cast, tmp_path: Path) -> None:
    _write_batches(tmp_path)  # 4 MiB each: over Django's in-memory limit, so spooled to disk
    with (tmp_path / "batch-0.json").open("rb") as a, (tmp_path / "batch-1.json").open("rb") as b:
        response = cast.client("curator").post("/api/v1/imports/neuronpedia/", {"file": [a, b]})
    assert response.status_code == 200, response.content[:500]
    assert (response.json()["features"], response.json()["labels_created"]) == (2, 2)
