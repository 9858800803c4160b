"""A busy worker counts as a worker (issue 14 item 1): a solo-pool worker in the middle of a
harvest answers no broadcast, yet ``workers_alive`` sees it, ``harvest --wait`` queues for it
instead of running in the command's own process, and a killed worker is forgotten."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.management import call_command

from browser.catalog.models import Model
from browser.runs.models import Run, Shard
from tests.texts import TEXTS
from workers.celery import queue
from workers.cli import workers_alive

pytestmark = pytest.mark.slow


def _until(check: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def corpus(transactional_db: None, minilm: Model, tmp_path: Path) -> str:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 400))  # ~700 contexts
    call_command("import_corpus", str(folder), name="busy", context_length=64, inline=True, stdout=io.StringIO())
    return "busy"


def test_a_busy_solo_worker_is_a_worker_and_a_dead_one_is_not(worker: subprocess.Popen[bytes], corpus: str) -> None:
    # The whole of MiniLM over ~45k tokens in batches of 4: the worker stays busy on this task for
    # many seconds after it claims the shard (on a quiet machine too).
    call_command("harvest", model="minilm-l6", corpus=corpus, hooks="blocks.5.mlp.hook_post", k=4, batch_size=4,
                 stdout=io.StringIO())
    busy = Run.objects.get()
    _until(lambda: Shard.objects.filter(run=busy, status=Shard.Status.CLAIMED).exists(), "the worker to be mid-shard")
    assert workers_alive("gpu") and workers_alive("default")
    listed = io.StringIO()
    call_command("job", "workers", stdout=listed)
    assert f"test-{os.getpid()}@{os.uname().nodename}  {queue('default')}, {queue('gpu')}" in listed.getvalue()

    out = io.StringIO()
    call_command("harvest", model="minilm-l6", corpus=corpus, hooks="blocks.0.mlp.hook_post", k=4, wait=True,
                 stdout=out)
    assert "queued 1 shard(s) on the gpu queue" in out.getvalue()
    assert "in this process" not in out.getvalue()
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.DONE}
    other = Run.objects.exclude(pk=busy.pk).get()
    worker_pid = str(worker.pid)
    assert set(Shard.objects.filter(run=other).values_list("claimed_by", flat=True)) == {
        f"{os.uname().nodename}:{worker_pid}"}  # the worker harvested it, not this process

    os.kill(worker.pid, signal.SIGKILL)  # no shutdown: its presence must expire by itself
    worker.wait()
    _until(lambda: not workers_alive("gpu"), "the dead worker to be forgotten", timeout=30)


def test_a_stopped_worker_withdraws_at_once(worker: subprocess.Popen[bytes]) -> None:
    _until(lambda: workers_alive("gpu"), "the worker to announce itself", timeout=30)
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    assert not workers_alive("gpu")
    listed = io.StringIO()
    call_command("job", "workers", stdout=listed)
    assert listed.getvalue() == "No worker is up.\n"
