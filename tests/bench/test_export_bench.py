"""Item 19: `bench export` reports rows/s from the rows the export actually wrote."""

from __future__ import annotations

import io

import pytest

from browser.catalog.models import Source
from browser.labels.models import Label
from tests.conftest import database_url
from workers.bench import export as bench

pytestmark = pytest.mark.slow


def test_export_rows_per_s_comes_from_the_rows_written(transactional_db: None, monkeypatch: pytest.MonkeyPatch,
                                                        settings: object) -> None:
    # The export runs in a fresh process: point it at this test's database.
    monkeypatch.setenv("DATABASE_URL", database_url())
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)  # type: ignore[attr-defined]
    log = io.StringIO()
    bench.fill(3000, log)  # an earlier, larger fill (kept with --keep) is still there
    result = bench.run(small=1000, large=2000, keep=False, log=log)
    for fmt in ("jsonl", "parquet"):
        for rows in (1000, 2000):
            measured = result["detail"][f"{fmt}_{rows}"]
            assert measured["rows"] == rows, (fmt, rows, measured)
            assert measured["rows_per_s"] == pytest.approx(rows / measured["seconds"], rel=0.01)
            assert measured["client_cpu_s_per_100k"] > 0
            assert measured["server_cpu_s_per_100k"] is None or measured["server_cpu_s_per_100k"] > 0
    assert (result["rows_small"], result["rows_large"]) == (1000, 2000)
    assert not Source.objects.filter(model__name=bench.MODEL).exists()
    assert not Label.objects.filter(unit__source__model__name=bench.MODEL).exists()
