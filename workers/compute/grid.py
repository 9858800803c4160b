"""The histogram and octave grid of every run, in plain Python: the harvest (torch), the
Neuronpedia import (numpy) and the pages (neither) read it from here.

Histogram bins come from the top 11 bits of a positive float32 (8 exponent + 2 mantissa bits):
[2^e (1 + j/4), 2^e (1 + (j+1)/4)) for e in -20..19. Bin 0 holds everything below 2^-20 (zero
and negatives), the last bin everything from 2^20. Interval (sketch) buckets are octaves
[2^e, 2^(e+1)) for e in -20..19, clamped at both ends.
"""

from __future__ import annotations

LOWEST_EXPONENT = -20
N_OCTAVES = 40
OCTAVE_LO = 127 + LOWEST_EXPONENT  # the biased float32 exponent of the first octave
HIST_KEY_LO = OCTAVE_LO * 4  # the 11-bit key (exponent, 2 mantissa bits) of bin 1
N_HIST_BINS = 2 + N_OCTAVES * 4


def hist_bin_lower_edge(b: int) -> float:
    """The lower edge of histogram bin ``b`` (bin 0 starts at -inf, bin 1 at 0)."""
    if b == 0:
        return float("-inf")
    if b == 1:
        return 0.0
    key = HIST_KEY_LO - 1 + b
    return 2.0 ** ((key >> 2) - 127) * (1 + (key & 3) / 4)


def hist_bin_upper_edge(b: int) -> float:
    """The upper edge of histogram bin ``b`` (the last bin has none)."""
    return hist_bin_lower_edge(b + 1) if b + 1 < N_HIST_BINS else float("inf")


def octave_range(bucket: int) -> tuple[float, float]:
    """[low, high) of interval bucket ``bucket``."""
    low = 2.0 ** (bucket + LOWEST_EXPONENT)
    return low, low * 2
