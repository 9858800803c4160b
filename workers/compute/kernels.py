"""One fused pass for the dense statistics of a batch on the CPU (numba).

On the CPU, torch computes each statistic of :class:`~workers.compute.stats.UnitAccumulator` in
its own pass over the [tokens, units] activations: the fire comparison and its count, the sums,
the context maxima, the histogram's scatter, then the top-k keys, the sketch's hash over
[contexts, units] and its bulk inserts. Those are a dozen memory-bound passes plus temporaries,
about 6 ms per MiniLM layer of 2,048 tokens, where the forward pass of that layer takes about 45.
:func:`batch_stats` reads each activation once, in the batch's own memory, and does all of it;
the units are split between threads, so every thread owns its units' counters and sketch slots
and nothing is reduced after.

The state it leaves equals the torch path's exactly, except that each context's float32 sum is
added in token order and may differ from torch's in its last bits before the fixed-point
rounding. The torch path stays for other devices (a GPU does those passes in a fraction of its
forward pass) and for machines without numba; tests hold both paths to the brute force and to
each other. This module imports numba (about 70 MB of LLVM), so the accumulator imports it on
its first CPU batch only.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange

MASK31 = (1 << 31) - 1
MASK32 = (1 << 32) - 1


def set_threads(n: int) -> None:
    """Use ``n`` threads (at most numba's pool size) in this thread's kernel calls."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]


def _compiled(function: Callable[..., None]) -> Callable[..., None]:
    """Compiled on first call; the machine code is cached next to this file (or in the user's
    cache directory, or $NUMBA_CACHE_DIR). Where no such place is writable (a read-only install
    without a home directory), numba refuses to cache: then each process compiles (~5 s)."""
    try:
        return njit(parallel=True, boundscheck=False, nogil=True, cache=True)(function)
    except RuntimeError:
        return njit(parallel=True, boundscheck=False, nogil=True)(function)


@_compiled
def batch_stats(x, bits, valid, T, contexts, units, seed,  # noqa: PLR0913 - one flat kernel signature
                hist_offset, hist_stride, hist_lo, n_bins, octave_lo, n_octaves, chunk,
                fire, total, unit_max, hist_t, keys, sk_pri, sk_ctx, sk_val, bad, kth, admit, pos_out, val_out):
    """Statistics of one batch; see the module docstring.

    Inputs: ``x`` [B*T, U] float32 and ``bits`` (the same memory as int32), ``valid`` [B*T],
    ``contexts`` [B] (global indices, ascending), ``units`` [U] (global ids, for the sketch's
    hash).
    Added to: ``fire`` and ``total`` (fixed point, 2^-16, per context) [U] int64, ``hist_t``
    [n_bins, U] int64 (rows with ``(r - hist_offset) % hist_stride == 0``), maximum into
    ``unit_max`` [U].
    Written: ``keys`` [U, B] top-k keys (-1 where the context does not fire).
    Inserted into: the sketch ``sk_pri``, ``sk_ctx``, ``sk_val`` [U*n_octaves, s], each slot's
    entries in ascending priority. A context enters its slot when its priority is below the last
    held one, after every held entry of equal priority: the lower context wins a tie, as in the
    torch path's bulk insert (stats.sketch.insert). A thread owns its units'
    slots, so the inserts need no locks and no buffers.
    Set: ``bad`` [n_chunks] (filled with -1 by the caller) to ``b * U + u`` of the chunk's first
    context whose sum over its valid tokens is not finite (a NaN or an infinity in it).
    Written, for the values kept of the contexts that may become examples (workers.compute.values):
    ``admit`` [U, B] 1 where the context enters the unit's top-k (its key beats ``kth`` [U]) or
    sketch slot, else 0; where 1, ``val_out`` [U, B, T] float32 its values over the context's
    tokens and ``pos_out`` [U, B] the first position of their maximum over the valid ones.
    """
    N, U = x.shape
    B = N // T
    n_chunks = (U + chunk - 1) // chunk
    for c in prange(n_chunks):
        u0 = c * chunk
        u1 = min(U, u0 + chunk)
        n = u1 - u0
        fired = np.zeros(n, np.int32)
        s = np.empty(n, np.float32)
        m = np.empty(n, np.float32)
        m_bits = m.view(np.int32)
        last = sk_pri.shape[1] - 1
        for b in range(B):
            s[:] = 0.0
            m[:] = -np.inf
            for t in range(T):
                r = b * T + t
                if not valid[r]:
                    continue
                row = x[r, u0:u1]
                for j in range(n):
                    v = row[j]
                    s[j] += v
                    fired[j] += v > 0
                    m[j] = max(m[j], v)
                if (r - hist_offset) % hist_stride == 0:
                    row_bits = bits[r, u0:u1]
                    for j in range(n):
                        k = min(max((row_bits[j] >> 21) - hist_lo, 0), n_bins - 1)
                        hist_t[k, u0 + j] += 1
            ctx = contexts[b]
            for j in range(n):
                u = u0 + j
                v = m[j]
                if bad[c] < 0 and not np.isfinite(s[j]):
                    bad[c] = b * U + u
                total[u] += np.int64(np.round(np.float64(s[j]) * 65536.0))
                unit_max[u] = max(unit_max[u], v)
                admitted = False
                if v > 0:
                    keys[u, b] = (np.int64(m_bits[j]) << 32) | (MASK32 - ctx)
                    admitted = keys[u, b] > kth[u]
                    # The sketch: this (context, unit)'s hash priority (stats.priority) into its
                    # octave's slot (stats.octave), by insertion into the sorted row.
                    p = (ctx * 0x9E3779B1 + units[u] * 0x85EBCA77 + seed) & MASK31
                    p = ((p ^ (p >> 15)) * 0x2C1B3C6D) & MASK31
                    p = ((p ^ (p >> 12)) * 0x297A2D39) & MASK31
                    p = p ^ (p >> 15)
                    slot = u * n_octaves + min(max((m_bits[j] >> 23) - octave_lo, 0), n_octaves - 1)
                    if p < sk_pri[slot, last]:
                        admitted = True
                        i = last
                        while i > 0 and sk_pri[slot, i - 1] > p:
                            sk_pri[slot, i] = sk_pri[slot, i - 1]
                            sk_ctx[slot, i] = sk_ctx[slot, i - 1]
                            sk_val[slot, i] = sk_val[slot, i - 1]
                            i -= 1
                        sk_pri[slot, i] = p
                        sk_ctx[slot, i] = ctx
                        sk_val[slot, i] = v
                else:
                    keys[u, b] = -1
                admit[u, b] = admitted
                if admitted:
                    best = -np.inf
                    for t in range(T):
                        value = x[b * T + t, u]
                        val_out[u, b, t] = value
                        if valid[b * T + t] and value > best:
                            best = value
                            pos_out[u, b] = t
        for j in range(n):
            fire[u0 + j] += fired[j]
