"""The rows an imported Neuronpedia feature becomes: statistics, examples, browse fields.

What the format holds and what it does not, and how each stored field is made:

* ``density`` is the batch's ``frac_nonzero``. ``n_tokens`` and ``fire_count`` are the tokens the
  dashboard ran over (``n_prompts_total`` x ``n_tokens_in_prompt``) and ``frac_nonzero`` of them
  when both are given; otherwise they count the imported windows' own tokens (and ``density``
  falls back to that fraction when ``frac_nonzero`` is missing, which overstates it: the windows
  were chosen where the unit fires). Such units are listed in the run's config.
* ``max`` is the largest value over the windows (and their ``maxValue``).
* ``mean`` over all tokens is not in the format. With the activation histogram and the token
  count it is derived as sum(bar midpoint x count) / tokens (exact up to the bar width);
  otherwise it is the mean of the imported windows' values, listed in the run's config as
  estimated from examples.
* ``hist``: SAEDashboard's bars are linear bins of the non-zero activations (midpoint, count).
  Each bar's count goes to the bin of the run's fixed grid (four bins per octave, read off the
  float32 bits exactly as ``workers.compute.stats.hist_bins``) that holds its midpoint; bin 0
  gets the tokens where the unit did not fire when the token count is known. The grid is finer
  than the bars at high values and coarser near zero, so the shape is approximate. A feature
  without bars keeps zero counts. ``hist_stride`` is 1 (the bars count every token).
* Examples: top activations (``binMin`` -1) are ranked by ``maxValue``; interval samples go to
  the octave bucket of their ``maxValue`` (the harvest's interval buckets, so the page's ranges
  hold), ranked by ``maxValue`` within it. Values are stored as little-endian float16 like the
  harvest's, ``max_pos`` is the argmax.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from browser.examples.models import Example
from browser.examples.services import ExampleRow, StatsRow
from browser.imports.neuronpedia_format import NpActivation, NpFeature
from workers.compute.grid import HIST_KEY_LO, N_HIST_BINS, N_OCTAVES, OCTAVE_LO

FLOAT16_MAX = 65504.0


def hist_bins(values: np.ndarray) -> np.ndarray:
    """The grid bin of each value (int64)."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32)
    return np.clip((bits >> 21) - (HIST_KEY_LO - 1), 0, N_HIST_BINS - 1).astype(np.int64)


def octaves(values: np.ndarray) -> np.ndarray:
    """The interval bucket (octave) of each value, clamped to the grid (int64)."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32)
    return np.clip((bits >> 23) - OCTAVE_LO, 0, N_OCTAVES - 1).astype(np.int64)


@dataclass(frozen=True)
class FeatureStats:
    row: StatsRow
    density_estimated: bool
    mean_estimated: bool


def _window_values(feature: NpFeature) -> np.ndarray:
    if not feature.activations:
        return np.zeros(0)
    return np.concatenate([np.asarray(a.values, dtype=np.float64) for a in feature.activations])


def feature_stats(feature: NpFeature, unit_id: int) -> FeatureStats:
    values = _window_values(feature)
    frac, seen = feature.frac_nonzero, feature.n_tokens_seen
    if frac is not None and seen:
        # frac_nonzero > 0 means it fired at least once, however small the rounded product.
        n_tokens, fire = seen, max(round(frac * seen), 1 if frac > 0 else 0)
        density = frac
    else:
        n_tokens, fire = int(values.size), int((values > 0).sum())
        density = frac if frac is not None else (fire / n_tokens if n_tokens else 0.0)
    peak = max([float(values.max())] + [a.max_value for a in feature.activations]) if values.size else 0.0
    hist = np.zeros(N_HIST_BINS, dtype=np.int64)
    if feature.hist_values:
        np.add.at(hist, hist_bins(np.asarray(feature.hist_values)), np.rint(feature.hist_heights).astype(np.int64))
    if frac is not None and seen:
        hist[0] += max(0, n_tokens - fire)
    if feature.hist_values and seen:
        mean = float(np.dot(feature.hist_values, feature.hist_heights)) / seen
        mean_estimated = False
    else:
        mean, mean_estimated = (float(values.mean()) if values.size else 0.0), True
    row: StatsRow = (unit_id, n_tokens, fire, density, mean, peak, hist.astype("<i8").tobytes(), 1)
    return FeatureStats(row, frac is None, mean_estimated)


def _packed(activation: NpActivation) -> bytes:
    values = np.clip(np.asarray(activation.values, dtype=np.float32), -FLOAT16_MAX, FLOAT16_MAX)
    return values.astype("<f2").tobytes()


def _ranked(activations: list[NpActivation]) -> list[NpActivation]:
    return sorted(activations, key=lambda a: -a.max_value)  # stable: file order on ties


def example_rows(feature: NpFeature, unit_id: int, context_of: Mapping[tuple[str, ...], int]) -> list[ExampleRow]:
    """Rows for examples_write: top activations, then interval samples by octave bucket."""
    rows: list[ExampleRow] = []
    top = _ranked([a for a in feature.activations if a.top])
    for rank, act in enumerate(top):
        rows.append((unit_id, Example.Kind.TOP, 0, rank, context_of[tuple(act.tokens)], act.max_value,
                     int(np.argmax(act.values)), _packed(act)))
    samples = [a for a in feature.activations if not a.top]
    buckets = octaves(np.asarray([a.max_value for a in samples])).tolist() if samples else []
    for bucket in sorted(set(buckets), reverse=True):
        members = _ranked([a for a, b in zip(samples, buckets, strict=True) if b == bucket])
        for rank, act in enumerate(members):
            rows.append((unit_id, Example.Kind.INTERVAL, bucket, rank, context_of[tuple(act.tokens)], act.max_value,
                         int(np.argmax(act.values)), _packed(act)))
    return rows


def top_token(feature: NpFeature) -> str:
    """The token at the max of the best top activation (of the best sample when none is top)."""
    pool = [a for a in feature.activations if a.top] or feature.activations
    if not pool:
        return ""
    best = _ranked(pool)[0]
    return best.tokens[int(np.argmax(best.values))]


def logit_effects(feature: NpFeature, token_id: Mapping[str, int]) -> dict[str, object]:
    return {"up": [[token_id[t], v] for t, v in feature.up], "down": [[token_id[t], v] for t, v in feature.down]}
