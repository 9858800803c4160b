"""A model load longer than the shard lease (issue 14 item 2): a real worker whose first load of
SmolLM2 converts its GGUF file (tens of seconds) while the lease is two seconds. It must not
hold a shard while it loads: another worker takes every shard at its first attempt, and the
slow worker neither loses a claim nor makes one count twice."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from browser.runs.models import Run, Shard
from tests.conftest import purge_queues, start_worker, stop_worker
from workers.pipeline.harvest import finalize, shards_work
from workers.pipeline.harvest.runtime import worker_name
from workers.pipeline.models import model_get_or_register

pytestmark = pytest.mark.slow
LEASE_S = 2


def test_a_load_longer_than_the_lease_takes_no_shard(transactional_db: None, settings: object,
                                                     tmp_path: Path) -> None:
    model_get_or_register("smollm2-135m")  # converted once into this process's cache (kept between sessions)
    (tmp_path / "a.txt").write_text(" ".join(["Shall I compare thee to a summer's day?"] * 40))
    call_command("import_corpus", str(tmp_path / "a.txt"), name="sonnet", tokenizer="smollm2-135m",
                 context_length=16, inline=True, stdout=io.StringIO())
    settings.SHARD_LEASE_S = LEASE_S  # type: ignore[attr-defined]
    purge_queues()
    # A worker with a cache of its own, empty: its first load converts the GGUF file again.
    slow = start_worker("slow-load", {"BROWSER_CACHE_DIR": str(tmp_path / "cold"),
                                      "BROWSER_SHARD_LEASE_S": str(LEASE_S), "OMP_NUM_THREADS": "1"})
    try:
        call_command("harvest", model="smollm2-135m", corpus="sonnet", hooks="blocks.0.mlp.hook_post", k=4,
                     batch_size=4, shard_contexts=8, stdout=io.StringIO())
        run = Run.objects.get()
        assert run.n_shards >= 3
        deadline = time.monotonic() + 60
        while not Run.objects.filter(pk=run.pk, status=Run.Status.HARVESTING).exists():  # the worker began
            assert time.monotonic() < deadline, "the worker did not take the run"
            time.sleep(0.1)
        time.sleep(LEASE_S + 1.0)  # the slow worker is still converting, longer than a lease
        converted = [p for p in (tmp_path / "cold").glob("models/*/config.json") if ".partial" not in p.parent.name]
        assert converted == []  # still converting
        # A second worker (this process, its model cached) harvests the run meanwhile.
        done_here = shards_work(run_id=run.pk, on_all_done=lambda rid: finalize(run_id=rid, progress=lambda *a, **k: None))
        run.refresh_from_db()
        assert run.status == Run.Status.DONE, run.error
        assert done_here == run.n_shards
        shards = list(Shard.objects.filter(run=run).values_list("attempts", "claimed_by"))
        assert shards == [(1, worker_name())] * run.n_shards
        assert "lost its claim" not in (run.job.log if run.job else "")
    finally:
        stop_worker(slow)
