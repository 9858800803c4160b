"""Per-token values of the contexts that may become examples, kept during the one forward pass.

An example shows its unit's value at every token of its context. Those values were once read by
a second forward pass over the chosen contexts; now the accumulator keeps them while the first
pass runs. A (unit, context) pair is *admitted* at its batch when it enters the unit's top-k
(its key beats the k-th held key) or its sketch slot; its values [T] are copied out (float16, as
stored) with the position of its maximum over the valid tokens (from the float32 values, so that
float16 rounding cannot move it). Now and then the store keeps only the pairs that can still be
chosen (:func:`candidate_keys`): every choice is monotone (a key that left the top-k, an entry
that left its slot, an octave below ``n_intervals`` higher used ones, an entry with ``samples``
lower priorities held never comes back), so nothing dropped is ever needed, and the store stays
within units x (k + (n_intervals + 1) x samples) pairs plus what arrived since the last sweep.
"""

from __future__ import annotations

import torch

from workers.compute.grid import N_OCTAVES

EMPTY_PRIORITY = 1 << 31  # above every 31-bit priority: an empty sketch entry
MASK32 = (1 << 32) - 1
# Gathers of admitted pairs run this many values at a time (bounds the float32 temporaries).
GATHER_VALUES = 1 << 22
# The store is swept once it holds this many pairs more than its last sweep kept, and at least
# twice as many: a few sweeps a shard once the top-k and sketch have filled.
MIN_GROWTH = 4096


def pair_keys(units: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """One int64 per (unit, context): the unit in the high 32 bits. Sorted keys group by unit."""
    return (units.long() << 32) | contexts.long()


def random_entries(unit_t: torch.Tensor, pri: torch.Tensor, ctx: torch.Tensor, samples: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The random firing examples of a sketch: per unit, the ``samples`` lowest (priority,
    context) over all its slots. ``unit_t`` [R] the unit of each used slot row, ``pri``/``ctx``
    [R, s]. Returns (mask of held entries [R*s], indices into the held entries, grouped by
    unit in ascending order, each unit's by priority)."""
    s = pri.shape[1]
    held = (pri < EMPTY_PRIORITY).reshape(-1)
    e_unit = unit_t.repeat_interleave(s)[held]
    e_pri, e_ctx = pri.reshape(-1)[held], ctx.reshape(-1)[held]
    order = torch.sort(e_ctx, stable=True).indices
    order = order[torch.sort(e_pri[order], stable=True).indices]
    order = order[torch.sort(e_unit[order], stable=True).indices]
    return held, order[rank_in_group(e_unit[order]) < samples]


def rank_in_group(sorted_groups: torch.Tensor) -> torch.Tensor:
    """Position of each element within its run of equal values (the input is sorted)."""
    index = torch.arange(sorted_groups.numel(), device=sorted_groups.device)
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first = torch.cummax(torch.where(starts, index, 0), 0).values
    return index - first


def candidate_keys(top_key: torch.Tensor, sk_pri: torch.Tensor, sk_ctx: torch.Tensor,
                   n_intervals: int | None) -> torch.Tensor:
    """Sorted pair keys of every (unit, context) that summarize could choose from this state: the
    top-k, the held entries of each unit's highest ``n_intervals`` used octaves (all used octaves
    when None), and each unit's random sample. ``sk_pri``/``sk_ctx`` are the dense sketch
    [units x octaves, s]."""
    n_units = top_key.shape[0]
    top_ctx = torch.where(top_key < 0, -1, MASK32 - (top_key & MASK32))
    top_units = torch.arange(n_units, device=top_key.device)[:, None].expand_as(top_ctx)
    top = pair_keys(top_units, top_ctx)[top_ctx >= 0]
    rows = (sk_pri[:, 0] < EMPTY_PRIORITY).nonzero().squeeze(1)  # ascending: by unit, then octave
    pri, ctx = sk_pri[rows], sk_ctx[rows]
    unit_t = rows // N_OCTAVES
    chosen = torch.ones_like(rows, dtype=torch.bool)
    if n_intervals is not None:
        unit_end = torch.bincount(unit_t, minlength=n_units).cumsum(0)
        chosen = (unit_end[unit_t] - 1 - torch.arange(rows.numel(), device=rows.device)) < n_intervals
    held_rows = (pri < EMPTY_PRIORITY) & chosen[:, None]
    intervals = pair_keys(unit_t[:, None].expand_as(ctx), ctx)[held_rows]
    held, first = random_entries(unit_t, pri, ctx, pri.shape[1])
    random = pair_keys(unit_t.repeat_interleave(pri.shape[1])[held][first], ctx.reshape(-1)[held][first])
    return torch.sort(torch.cat([top, intervals, random])).values  # a pair may appear twice: no matter


class ValueStore:
    """Admitted pairs' keys, max positions and per-token values, in buffers that grow and are
    reused (small tensors kept alive between the forward pass's temporaries fragment the heap)."""

    def __init__(self, n_units: int) -> None:
        self.n_units = n_units
        self.n = 0
        self.key: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.val: torch.Tensor | None = None
        self.limit = MIN_GROWTH

    @property
    def full(self) -> bool:
        """Whether it is time to sweep out what can no longer be chosen."""
        return self.n > self.limit

    def add(self, acts: torch.Tensor, invalid: torch.Tensor, contexts: torch.Tensor, admitted: torch.Tensor) -> None:
        """Copy out the admitted pairs of a batch: ``acts`` [B, T, U], ``invalid`` [B, T],
        ``contexts`` [B], ``admitted`` [B, U] bool."""
        b_idx, u_idx = admitted.nonzero(as_tuple=True)
        T = acts.shape[1]
        step = max(1, GATHER_VALUES // T)
        for start in range(0, b_idx.numel(), step):
            b, u = b_idx[start : start + step], u_idx[start : start + step]
            values = acts[b, :, u].float()  # [P, T]
            pos = values.masked_fill(invalid[b], float("-inf")).argmax(1)  # the first maximum
            self.append(pair_keys(u, contexts[b]), pos, values.clamp(-65504, 65504).half())

    def append(self, key: torch.Tensor, pos: torch.Tensor, val: torch.Tensor) -> None:
        """Add pairs: keys [P], max positions [P], values [P, T] (stored as float16)."""
        end = self.n + key.numel()
        if self.key is None or self.val is None or self.key.numel() < end:
            self._grow(max(end, 2 * self.n, 1024), val.shape[1], key.device)
        assert self.key is not None and self.pos is not None and self.val is not None
        self.key[self.n : end] = key
        self.pos[self.n : end] = pos
        self.val[self.n : end] = val
        self.n = end

    def _grow(self, capacity: int, T: int, device: torch.device) -> None:
        with torch.inference_mode(False):  # normal tensors: written in any mode
            key = torch.empty(capacity, dtype=torch.int64, device=device)
            pos = torch.empty(capacity, dtype=torch.int64, device=device)
            val = torch.empty(capacity, T, dtype=torch.float16, device=device)
        if self.key is not None and self.pos is not None and self.val is not None:
            key[: self.n], pos[: self.n], val[: self.n] = self.key[: self.n], self.pos[: self.n], self.val[: self.n]
        self.key, self.pos, self.val = key, pos, val

    def keep(self, live: torch.Tensor) -> None:
        """Keep only the pairs whose keys are in ``live`` (sorted; a binary search each, which
        on a busy two-core machine costs far less than torch.isin's parallel sorts)."""
        if self.key is None or self.pos is None or self.val is None or not self.n:
            return
        key = self.key[: self.n]
        if live.numel():
            at = torch.searchsorted(live, key).clamp_(max=live.numel() - 1)
            kept = (live[at] == key).nonzero().squeeze(1)
        else:
            kept = key[:0]
        m = kept.numel()
        if m < self.n:
            self.key[:m], self.pos[:m], self.val[:m] = key[kept], self.pos[kept], self.val[kept]
        self.n = m
        self.limit = max(2 * m, m + MIN_GROWTH)

    def state(self) -> dict[str, torch.Tensor]:
        """``ex_key`` [P] sorted, ``ex_pos`` [P], ``ex_val`` [P, T] float16, on the CPU."""
        if self.key is None or self.pos is None or self.val is None:
            return {"ex_key": torch.zeros(0, dtype=torch.int64), "ex_pos": torch.zeros(0, dtype=torch.int64),
                    "ex_val": torch.zeros(0, 0, dtype=torch.float16)}
        order = torch.argsort(self.key[: self.n])
        return {"ex_key": self.key[order].cpu(), "ex_pos": self.pos[order].cpu(),
                "ex_val": self.val[order].cpu().contiguous()}

    def merge(self, state: dict[str, torch.Tensor], device: torch.device) -> None:
        """Add a stored state's pairs (another shard's: its contexts are not held here)."""
        if state["ex_key"].numel():
            self.append(state["ex_key"].to(device), state["ex_pos"].to(device), state["ex_val"].to(device))


def lookup(state: dict[str, torch.Tensor], keys: torch.Tensor) -> torch.Tensor:
    """Rows of ``ex_key`` holding ``keys`` (each must be there: it was admitted and kept)."""
    rows = torch.searchsorted(state["ex_key"], keys).clamp_(max=max(state["ex_key"].numel() - 1, 0))
    missing = state["ex_key"][rows] != keys if state["ex_key"].numel() else torch.ones_like(keys, dtype=torch.bool)
    if bool(missing.any()):
        raise RuntimeError(f"{int(missing.sum())} chosen examples have no kept values (the store lost them)")
    return rows
