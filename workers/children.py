"""Child processes that a long-running command owns (the demo's worker and web server).

Each child runs in a session (process group) of its own, so stopping it stops whatever it forked
(gunicorn's workers), and a terminal's Ctrl-C reaches only the parent, which stops them in order.
Each child's pid and start time are written to ``NAME.pid`` in a folder under the data dir, so a
later command finds what an earlier one left when it died without cleaning up (SIGKILL, a crash)
and stops it; the start time makes sure a recycled pid is never mistaken for it. SIGTERM and
SIGHUP are turned into :class:`Stopped`, so the parent's ``finally`` cleans up on them as on
Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STOP_WAIT_S = 30


class Stopped(Exception):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signum)


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """Within the block, these signals raise :class:`Stopped` in the main thread."""
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def signals_ignored(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)) -> Iterator[None]:
    """Within the block (the cleanup itself), these signals are ignored so it runs to the end."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None) -> bool:
    """Whether the process that was ``pid`` when it started at ``started`` still runs."""
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def stop_group(pid: int, started: int | None, wait_s: float = STOP_WAIT_S, group: bool = True) -> None:
    """SIGTERM the process group led by ``pid`` (the process alone when not ``group``), if it is still
    that process; SIGKILL after ``wait_s``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid, started):
            return
        try:
            os.killpg(pid, signum) if group else os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and alive(pid, started):
            _reap(pid)
            time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent (or init) reaps it


class PidFiles:
    """``NAME.pid`` files (``PID START_TIME``) in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, name: str, pid: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{name}.pid").write_text(f"{pid} {start_time(pid) or 0}\n")

    def read(self, name: str) -> tuple[int, int | None] | None:
        try:
            pid, started = (self.folder / f"{name}.pid").read_text().split()
            return int(pid), int(started) or None
        except (FileNotFoundError, ValueError):
            return None

    def remove(self, name: str) -> None:
        (self.folder / f"{name}.pid").unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(path.stem for path in self.folder.glob("*.pid")) if self.folder.exists() else []


class Children:
    """Start named children in sessions of their own and stop them all, newest first."""

    def __init__(self, pid_dir: Path) -> None:
        self.pids = PidFiles(pid_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **popen)
        self.procs[name] = proc
        self.pids.write(name, proc.pid)
        return proc

    def stop_leftovers(self, keep: tuple[str, ...] = ()) -> list[str]:
        """Stop the children an earlier command left running; the names of those it found alive."""
        found = []
        for name in self.pids.names():
            if name in keep:
                continue
            entry = self.pids.read(name)
            if entry is not None and alive(*entry):
                found.append(name)
                stop_group(*entry)
            self.pids.remove(name)
        return found

    def any_exited(self) -> bool:
        return any(proc.poll() is not None for proc in self.procs.values())

    def stop_all(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            stop_group(proc.pid, None)
            proc.wait()
            self.pids.remove(name)
        self.procs.clear()
