"""Item 17: `manage.py demo` stops its children on SIGTERM and SIGHUP as on Ctrl-C, and the next demo
stops what a killed one left (its pid files under the data dir) and reuses the embedded servers.

A real demo process (``--serve-only``: the same process handling, without the model steps) runs
on the embedded default in a temporary data dir: embedded PostgreSQL and Redis, a Celery worker
and gunicorn, all real.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser.core import embedded
from tests.conftest import ROOT
from workers.children import PidFiles, alive, start_time

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}}
    env.update({"BROWSER_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "BROWSER_WEB_WORKERS": "1"})
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/api/v1/models/")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _start_demo(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(data_dir.parent / f"demo-{port}.log", "wb")
    return subprocess.Popen([sys.executable, "manage.py", "demo", "--serve-only", "--port", str(port)], cwd=ROOT,
                            env=_env(data_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_up(proc: subprocess.Popen[bytes], data_dir: Path, port: int) -> None:
    deadline = time.monotonic() + 300
    worker_log = data_dir / "worker.log"
    while not (_answers(port) and worker_log.exists() and " ready." in worker_log.read_text(errors="replace")):
        log = (data_dir.parent / f"demo-{port}.log").read_text(errors="replace")
        assert proc.poll() is None, f"the demo exited ({proc.returncode}):\n{log[-3000:]}"
        assert time.monotonic() < deadline, f"the demo did not come up:\n{log[-3000:]}"
        time.sleep(0.5)


def _pid_of(path: Path) -> tuple[int, int | None]:
    pid = int(path.read_text().split()[0])
    return pid, start_time(pid)


def _ppid_and_cmdline(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return int(stat.rsplit(")", 1)[1].split()[1]), cmdline


def _children(demo_pid: int, data_dir: Path) -> dict[str, tuple[int, int | None]]:
    """The demo's worker and gunicorn (found as its child processes) and the embedded servers."""
    found: dict[str, tuple[int, int | None]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid, cmdline = _ppid_and_cmdline(int(entry.name))
            except (OSError, IndexError):
                continue
            for name, marker in (("worker", "celery"), ("web", "gunicorn")):
                if ppid == demo_pid and marker in cmdline:
                    found[name] = (int(entry.name), start_time(int(entry.name)))
    assert set(found) == {"worker", "web"}, found
    return {**found, "postgres": _pid_of(data_dir / "postgres" / "postmaster.pid"),
            "redis": _pid_of(data_dir / "redis" / "redis.pid")}


def _in_group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name), None):
                    members.append(int(entry.name))
            except (ProcessLookupError, OSError):
                continue
    return members


def _assert_all_stopped(data_dir: Path, procs: dict[str, tuple[int, int | None]]) -> None:
    deadline = time.monotonic() + 30  # the servers' own children exit just after them
    while time.monotonic() < deadline and any(alive(*p) for p in procs.values()):
        time.sleep(0.2)
    assert {name: p for name, p in procs.items() if alive(*p)} == {}
    assert _in_group(procs["worker"][0]) == [] and _in_group(procs["web"][0]) == []  # gunicorn's workers too
    assert not embedded.pg_running(data_dir) and not embedded.redis_running(data_dir)


def _cleanup(data_dir: Path, *procs: dict[str, tuple[int, int | None]]) -> None:
    for group in procs:
        for name in ("worker", "web"):
            if name in group and alive(*group[name]):
                os.killpg(group[name][0], signal.SIGKILL)
    embedded.stop(data_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_demo_stops_its_children_on(signum: int, data_dir: Path) -> None:
    port = _free_port()
    demo = _start_demo(data_dir, port)
    procs: dict[str, tuple[int, int | None]] = {}
    try:
        _wait_up(demo, data_dir, port)
        procs = _children(demo.pid, data_dir)
        os.kill(demo.pid, signum)
        assert demo.wait(timeout=120) == 0
        _assert_all_stopped(data_dir, procs)
        assert PidFiles(data_dir / "demo").names() == []
    finally:
        if demo.poll() is None:
            demo.kill()
        _cleanup(data_dir, procs)


def test_next_demo_stops_what_a_killed_one_left_and_reuses_the_servers(data_dir: Path) -> None:
    first_port, second_port = _free_port(), _free_port()
    first = _start_demo(data_dir, first_port)
    left: dict[str, tuple[int, int | None]] = {}
    after: dict[str, tuple[int, int | None]] = {}
    second = None
    try:
        _wait_up(first, data_dir, first_port)
        left = _children(first.pid, data_dir)
        first.kill()  # SIGKILL: no cleanup at all; its children and servers keep running
        first.wait()
        assert all(alive(*p) for p in left.values())
        second = _start_demo(data_dir, second_port)
        _wait_up(second, data_dir, second_port)
        after = _children(second.pid, data_dir)
        assert not alive(*left["worker"]) and not alive(*left["web"])
        assert _in_group(left["web"][0]) == [] and not _answers(first_port)
        assert after["postgres"] == left["postgres"] and after["redis"] == left["redis"]  # reused
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(timeout=120) == 0
        _assert_all_stopped(data_dir, after)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        _cleanup(data_dir, left, after)
