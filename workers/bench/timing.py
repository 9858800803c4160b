"""Side-by-side timing of two ways to process the same batches, robust to a noisy machine.

Timing one whole pass and then the other lets a burst of load from another process land on one
side only: on this project's shared 2-core machines the bare pass alone varied by 30% between
rounds. ``paired`` interleaves the two per batch, in ABBA order (A then B on even batches, B then
A on odd ones), so load and drift fall on both sides alike and the ratio of the sums is what the
extra work costs. Several rounds give a median of ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

B = TypeVar("B")


@dataclass(frozen=True)
class Paired:
    """Seconds spent on each side over all batches of one round (wall and this process's CPU)."""

    a_wall: float
    b_wall: float
    a_cpu: float
    b_cpu: float

    @property
    def ratio(self) -> float:
        """Throughput of B over throughput of A (A's time over B's time)."""
        return self.a_wall / self.b_wall

    @property
    def cpu_ratio(self) -> float:
        return self.a_cpu / self.b_cpu


def paired(batches: Sequence[B], a: Callable[[B], object], b: Callable[[B], object]) -> Paired:
    """Run ``a`` and ``b`` on every batch, alternating which goes first, and sum their times."""
    wall = [0.0, 0.0]
    cpu = [0.0, 0.0]
    sides = (a, b)
    for i, batch in enumerate(batches):
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            w, c = time.perf_counter(), time.process_time()
            sides[side](batch)
            wall[side] += time.perf_counter() - w
            cpu[side] += time.process_time() - c
    return Paired(wall[0], wall[1], cpu[0], cpu[1])


@dataclass(frozen=True)
class Rounds:
    rounds: list[Paired]

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios."""
        return statistics.median(r.ratio for r in self.rounds)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(r.cpu_ratio for r in self.rounds)

    def tokens_per_s(self, n_tokens: int) -> tuple[float, float]:
        """(A, B) tokens per second from the median round time of each side."""
        return (n_tokens / statistics.median(r.a_wall for r in self.rounds),
                n_tokens / statistics.median(r.b_wall for r in self.rounds))

    def per_round(self) -> list[float]:
        return [round(r.ratio, 3) for r in self.rounds]
