"""The unit histogram: its data (examples.selectors.unit_histogram) on the run's bin grid, checked
against edges worked out by hand from the grid's definition, and its drawing (catalog.charts)."""

from __future__ import annotations

import re

import numpy as np

from browser.catalog.charts import activation_histogram_svg
from browser.examples.models import UnitStats
from browser.examples.selectors import ActivationHistogram, unit_histogram
from workers.compute.grid import N_HIST_BINS


def _stats(counts: dict[int, int], stride: int = 1) -> UnitStats:
    hist = np.zeros(N_HIST_BINS, dtype="<i8")
    for b, c in counts.items():
        hist[b] = c
    return UnitStats(hist=hist.tobytes(), hist_stride=stride)


def test_the_histogram_spans_its_first_to_last_filled_bin() -> None:
    # Bin 0 (zero and negatives) is left out. Bins b >= 2 start at 2^e (1 + j/4) where
    # 4 (e + 127) + j = 427 + b (bin 1 starts at 2^-20): bin 5 at 2^-19, bin 10 at 1.25 * 2^-18.
    hist = unit_histogram(_stats({0: 1000, 5: 3, 9: 7}, stride=4))
    assert hist.counts == [3, 0, 0, 0, 7]
    assert (hist.low, hist.high, hist.stride) == (2.0**-19, 1.25 * 2.0**-18, 4)
    top = unit_histogram(_stats({N_HIST_BINS - 1: 2}))
    assert (top.counts, top.high) == ([2], float("inf"))  # the last bin holds everything from 2^20


def test_the_drawing_scales_bars_to_the_tallest_and_names_the_span() -> None:
    svg = str(activation_histogram_svg(ActivationHistogram([3, 0, 7], 0.5, 4.0, 2), width=300, height=70))
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert heights == [30.0, 0.0, 70.0]  # 3/7 and 7/7 of 70
    assert re.findall(r"<title>(\d+)</title>", svg) == ["3", "0", "7"]
    label = "activations from about 0.5 to 4 (log scale, one token in 2)"
    assert f'aria-label="{label}"' in svg and f'<p class="caption">{label}</p>' in svg


def test_a_unit_that_never_fired_gets_a_sentence() -> None:
    hist = unit_histogram(_stats({0: 50}))
    assert hist.counts == []
    assert str(activation_histogram_svg(hist)) == '<p class="empty">The unit never fired above 2^-20.</p>'
