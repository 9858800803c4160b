"""First-time GGUF conversion shared by processes (issue 14 item 3): ``loading.build_once`` run by
two real processes at once builds the cache folder once, into a folder of its own, renamed into
place; the second process waits and uses it. The builder here stands in for the 20-30 s GGUF
dequantization (which ``local_files`` passes to the same function): it writes slowly, so the two
processes overlap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.compute.loading import build_once

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import os, sys, time
from pathlib import Path
from workers.compute.loading import build_once

target, log, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def build(folder):
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {folder.name}\\n")
    (folder / "model.safetensors").write_bytes(os.urandom(1 << 20))
    time.sleep(1.5)
    (folder / "config.json").write_text(str(os.getpid()))
    with open(log, "a") as f:
        f.write(f"end {os.getpid()}\\n")

while not go.exists():
    time.sleep(0.01)
path = build_once(target, build)
print(path, (path / "config.json").is_file(), flush=True)
"""


def test_two_processes_convert_once(tmp_path: Path) -> None:
    target, log, go = tmp_path / "models" / "smol-abc", tmp_path / "log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(log), str(go)], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(2)  # both started (imports done) and waiting for the signal
    go.touch()
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    # Both return the complete folder; exactly one process built it.
    assert [out.split() for out, _ in outputs] == [[str(target), "True"]] * 2
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "end"]
    builder = lines[0].split()[1]
    assert (target / "config.json").read_text() == builder
    assert lines[0].split()[2].endswith(".partial") and lines[0].split()[2] != target.name  # its own folder
    assert not list(target.parent.glob("*.partial"))


def test_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"

    def broken(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        build_once(target, broken)
    assert not target.exists() and not list(target.parent.glob("*.partial"))

    calls: list[Path] = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "config.json").write_text("{}")

    assert build_once(target, build) == target and build_once(target, build) == target
    assert len(calls) == 1 and (target / "config.json").is_file()
