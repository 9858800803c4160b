"""Progress on the command line: a bar on a terminal, a line every few seconds in a log.

A tqdm bar redraws itself with carriage returns many times a second; written to a file or a
pipe (``make demo > log``, a process manager), every redraw becomes a line, thousands per job.
When the stream is not a terminal, :class:`LineProgress` writes one plain line every
``LOG_EVERY_S`` seconds, and one at the end.
"""

from __future__ import annotations

import time
from io import TextIOBase
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

Output = TextIO | TextIOBase
LOG_EVERY_S = 5.0


class LineProgress:
    """The part of tqdm's interface the commands use, written as log lines."""

    def __init__(self, *, total: int, desc: str, file: Output, every_s: float = LOG_EVERY_S) -> None:
        self.total, self.n, self.desc, self.file, self.every_s = total, 0, desc, file, every_s
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._written: tuple[int, str] | None = None

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._write()

    def close(self) -> None:
        if self._written != (self.n, self.postfix):  # the last state, unless just written
            self._write()

    def _write(self) -> None:
        self._last = now = time.monotonic()
        elapsed = now - self._start
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f}/s" if elapsed > 0 and self.n else ""
        tail = f", {self.postfix}" if self.postfix else ""
        self.file.write(f"{self.desc}: {self.n:,}/{self.total:,}{share} in {elapsed:.0f} s{rate}{tail}\n")
        self.file.flush()
        self._written = (self.n, self.postfix)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def progress_bar(*, total: int, desc: str, file: Output) -> tqdm | LineProgress:
    """A tqdm bar on a terminal, log lines anywhere else."""
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, file=file, unit="", dynamic_ncols=True)
    return LineProgress(total=total, desc=desc, file=file)
