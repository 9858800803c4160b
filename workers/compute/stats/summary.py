"""Per-unit results read off a (merged) accumulator state."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.compute.grid import N_HIST_BINS, N_OCTAVES
from workers.compute.stats.keys import FIXED_SCALE, decode_top_keys
from workers.compute.values import EMPTY_PRIORITY, random_entries


@dataclass(frozen=True)
class UnitSummary:
    n_tokens: int
    fire_count: int
    mean: float
    max: float
    hist: list[int]
    top: list[tuple[int, float]]
    """(context, value) best first."""
    intervals: list[tuple[int, list[tuple[int, float]]]]
    """(octave bucket, [(context, value), ...] by priority), highest octave first."""
    random: list[tuple[int, float]]


def summarize(state: dict[str, torch.Tensor], *, n_intervals: int) -> list[UnitSummary]:
    """Per-unit results of a (merged) state, on the CPU.

    Read from the sketch's used slots only (``sk_rows``, ascending, so each unit's octaves are
    contiguous and in ascending order): most of the dense [units x octaves x s] sketch is empty.
    """
    n_tokens = int(state["n_tokens"])
    n_units = state["top_key"].shape[0]
    intervals = _intervals(state, n_units, n_intervals)
    random = _random(state, n_units)
    top_val, top_ctx = (t.tolist() for t in decode_top_keys(state["top_key"]))
    hist = state["hist"].view(n_units, N_HIST_BINS).tolist()
    fire, total, mx = state["fire"].tolist(), state["total"].tolist(), state["max"].tolist()
    out = []
    for u in range(n_units):
        out.append(UnitSummary(
            n_tokens=n_tokens, fire_count=fire[u], mean=total[u] / FIXED_SCALE / n_tokens if n_tokens else 0.0,
            max=mx[u], hist=hist[u],
            top=[(c, v) for c, v in zip(top_ctx[u], top_val[u], strict=True) if c >= 0],
            intervals=intervals[u], random=random[u],
        ))
    return out


def _intervals(state: dict[str, torch.Tensor], n_units: int,
               n_intervals: int) -> list[list[tuple[int, list[tuple[int, float]]]]]:
    """Each unit's highest ``n_intervals`` used octaves (its last rows), highest first."""
    rows, pri, ctx, val = state["sk_rows"], state["sk_pri"], state["sk_ctx"], state["sk_val"]
    s = int(state["sk_shape"][1])
    unit_t = rows // N_OCTAVES
    unit, bucket = unit_t.tolist(), (rows % N_OCTAVES).tolist()
    unit_end = torch.bincount(unit_t, minlength=n_units).cumsum(0)
    chosen_rows = ((unit_end[unit_t] - 1 - torch.arange(rows.numel())) < n_intervals).nonzero().squeeze(1).tolist()
    filled = (pri < EMPTY_PRIORITY).tolist()
    ctx_l, val_l = ctx.tolist(), val.tolist()
    intervals: list[list[tuple[int, list[tuple[int, float]]]]] = [[] for _ in range(n_units)]
    for r in reversed(chosen_rows):  # highest octave first
        intervals[unit[r]].append(
            (bucket[r], [(ctx_l[r][j], val_l[r][j]) for j in range(s) if filled[r][j]]))
    return intervals


def _random(state: dict[str, torch.Tensor], n_units: int) -> list[list[tuple[int, float]]]:
    """Random firing examples: each unit's s lowest (priority, context) over all its octaves."""
    rows, pri, ctx, val = state["sk_rows"], state["sk_pri"], state["sk_ctx"], state["sk_val"]
    s = int(state["sk_shape"][1])
    unit_t = rows // N_OCTAVES
    held, first = random_entries(unit_t, pri, ctx, s)
    e_unit, e_ctx, e_val = unit_t.repeat_interleave(s)[held], ctx.reshape(-1)[held], val.reshape(-1)[held]
    random: list[list[tuple[int, float]]] = [[] for _ in range(n_units)]
    for u, c, v in zip(e_unit[first].tolist(), e_ctx[first].tolist(), e_val[first].tolist(), strict=True):
        random[u].append((c, v))
    return random
