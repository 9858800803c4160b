"""Brute-force references that keep every activation (numpy), for the streaming statistics."""

from __future__ import annotations

import numpy as np

from workers.compute.stats import HIST_KEY_LO, MASK31, N_HIST_BINS, N_OCTAVES, OCTAVE_LO


def np_priority(ctx: np.ndarray, unit: np.ndarray, seed: int) -> np.ndarray:
    x = (ctx.astype(np.int64) * 0x9E3779B1 + unit.astype(np.int64) * 0x85EBCA77 + seed) & MASK31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & MASK31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & MASK31
    return x ^ (x >> 15)


def np_hist_bin(v: np.ndarray) -> np.ndarray:
    bits = v.astype(np.float32).view(np.int32).astype(np.int64)
    return np.clip((bits >> 21) - (HIST_KEY_LO - 1), 0, N_HIST_BINS - 1)


def np_octave(v: np.ndarray) -> np.ndarray:
    bits = v.astype(np.float32).view(np.int32).astype(np.int64)
    return np.clip((bits >> 23) - OCTAVE_LO, 0, N_OCTAVES - 1)


def brute_force(acts: np.ndarray, invalid: np.ndarray, *, k: int, samples: int, n_intervals: int,
                hist_stride: int, seed: int, unit_offset: int = 0) -> list[dict[str, object]]:
    """acts [C, T, U] for contexts 0..C-1; invalid [C, T]. One dict per unit."""
    C, T, U = acts.shape
    valid = ~invalid
    out = []
    g = (np.arange(C)[:, None] * T + np.arange(T)[None, :])  # global token index
    in_sample = (g % hist_stride == 0) & valid
    for u in range(U):
        a = acts[:, :, u].astype(np.float32)
        va = a[valid]
        hist = np.bincount(np_hist_bin(a[in_sample]), minlength=N_HIST_BINS)
        ctx_max = np.where(valid, a, -np.inf).max(1)
        firing = [(c, float(ctx_max[c])) for c in range(C) if ctx_max[c] > 0]
        top = sorted(firing, key=lambda cv: (-cv[1], cv[0]))[:k]
        ctxs = np.array([c for c, _ in firing], dtype=np.int64)
        pri = np_priority(ctxs, np.full_like(ctxs, u + unit_offset), seed) if len(ctxs) else ctxs
        octs = np_octave(np.array([v for _, v in firing], dtype=np.float32)) if firing else ctxs
        by_bucket: dict[int, list[tuple[int, int, float]]] = {}
        for (c, v), p, b in zip(firing, pri.tolist(), octs.tolist(), strict=True):
            by_bucket.setdefault(b, []).append((p, c, v))
        intervals = []
        for b in sorted(by_bucket, reverse=True)[:n_intervals]:
            intervals.append((b, [(c, v) for _, c, v in sorted(by_bucket[b])[:samples]]))
        pool = sorted(item for members in by_bucket.values() for item in sorted(members)[:samples])
        random = [(c, v) for _, c, v in sorted(pool)[:samples]]
        out.append({
            "n_tokens": int(valid.sum()), "fire": int((va > 0).sum()), "total": float(va.astype(np.float64).sum()),
            "max": float(va.max()) if va.size else float("-inf"), "hist": hist.tolist(), "top": top,
            "intervals": intervals, "random": random,
        })
    return out
