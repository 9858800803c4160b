"""Where a value falls: its histogram bin and sketch octave (read off the float32 bits, no log),
and the hash priority that picks each (context, unit)'s place in the interval sketch."""

from __future__ import annotations

import torch

from workers.compute import grid
from workers.compute.grid import HIST_KEY_LO, N_HIST_BINS, N_OCTAVES, OCTAVE_LO

MASK31 = (1 << 31) - 1


def hist_bins(x: torch.Tensor) -> torch.Tensor:
    """Histogram bin of each float32 value (int32)."""
    return ((x.view(torch.int32) >> 21) - (HIST_KEY_LO - 1)).clamp_(0, N_HIST_BINS - 1)


def hist_bin_lower_edges() -> list[float]:
    """The lower edge of every bin (bin 0 starts at -inf)."""
    return [grid.hist_bin_lower_edge(b) for b in range(N_HIST_BINS)]


def octave(values: torch.Tensor) -> torch.Tensor:
    """Sketch bucket (octave) of positive float32 values, clamped to the grid."""
    return ((values.view(torch.int32) >> 23) - OCTAVE_LO).clamp_(0, N_OCTAVES - 1).long()


def octave_range(bucket: int) -> tuple[float, float]:
    exponent = bucket + OCTAVE_LO - 127
    low = 0.0 if bucket == 0 else 2.0**exponent
    high = float("inf") if bucket == N_OCTAVES - 1 else 2.0 ** (exponent + 1)
    return low, high


def priority(contexts: torch.Tensor, units: torch.Tensor, seed: int) -> torch.Tensor:
    """A 31-bit hash of (context, unit, seed), reproducible on any device and in numpy.

    Every product stays below 2^62, so int64 arithmetic never overflows.
    """
    x = (contexts * 0x9E3779B1 + units * 0x85EBCA77 + seed) & MASK31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & MASK31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & MASK31
    return x ^ (x >> 15)
