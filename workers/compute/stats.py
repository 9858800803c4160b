"""Streaming per-unit statistics: exact top-k, sampled intervals, density, histogram.

Everything is mergeable exactly, so shards computed apart combine into the result of one pass:

* top-k contexts by each context's max activation, ties broken by the lower context index;
* density (tokens with activation > 0), mean, max;
* a histogram on a fixed bin grid read off the float32 bits (four bins per octave, no log);
* interval and random samples from a bottom-s sketch: each (unit, context) gets a hash priority,
  and per (unit, octave of the context's max) the ``s`` lowest priorities are kept. Any union of
  octaves then yields its exact bottom-s sample, so sampling never needs a second pass.

Dense activations stay on their device; only these small states ever move to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Histogram bins come from the top 11 bits of a positive float32 (8 exponent + 2 mantissa bits):
# [2^e (1 + j/4), 2^e (1 + (j+1)/4)). Bin 0 holds everything below 2^-20 (zero and negatives).
HIST_KEY_LO = (127 - 20) * 4
N_HIST_BINS = 2 + 40 * 4
# Sketch buckets are octaves [2^e, 2^(e+1)) for e in -20..19.
OCTAVE_LO = 127 - 20
N_OCTAVES = 40
MASK31 = (1 << 31) - 1
EMPTY_PRIORITY = 1 << 31  # above every 31-bit priority


def hist_bins(x: torch.Tensor) -> torch.Tensor:
    """Histogram bin of each float32 value (int64)."""
    return ((x.view(torch.int32) >> 21) - (HIST_KEY_LO - 1)).clamp_(0, N_HIST_BINS - 1).long()


def hist_bin_lower_edges() -> list[float]:
    """The lower edge of every bin (bin 0 starts at -inf)."""
    edges = [float("-inf")]
    for b in range(1, N_HIST_BINS):
        key = HIST_KEY_LO - 1 + b
        exponent, quarter = (key >> 2) - 127, key & 3
        edges.append(2.0**exponent * (1 + quarter / 4) if b > 1 else 0.0)
    return edges


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


@dataclass
class Batch:
    """One forward pass's worth of activations for one source."""

    acts: torch.Tensor
    """[B, T, U] activations (any float dtype; reduced in float32)."""
    contexts: torch.Tensor
    """[B] global context indices (int64), ascending."""
    invalid: torch.Tensor
    """[B, T] True at positions left out of every statistic (padding, special tokens)."""
    first_token: int
    """Global index of the batch's first token (context index x context length)."""


class UnitAccumulator:
    """The mergeable state of ``n_units`` units; see the module docstring."""

    def __init__(self, n_units: int, *, k: int, samples: int, hist_stride: int, seed: int,
                 unit_offset: int = 0, device: torch.device | str = "cpu") -> None:
        self.n_units, self.k, self.samples, self.hist_stride, self.seed = n_units, k, samples, hist_stride, seed
        dev = torch.device(device)
        self.units = torch.arange(n_units, device=dev, dtype=torch.int64) + unit_offset
        self.n_tokens = torch.zeros((), dtype=torch.int64, device=dev)
        self.fire = torch.zeros(n_units, dtype=torch.int64, device=dev)
        self.total = torch.zeros(n_units, dtype=torch.float64, device=dev)
        self.max = torch.full((n_units,), float("-inf"), device=dev)
        self.hist = torch.zeros(n_units * N_HIST_BINS, dtype=torch.int64, device=dev)
        self.top_val = torch.full((n_units, k), float("-inf"), device=dev)
        self.top_ctx = torch.full((n_units, k), -1, dtype=torch.int64, device=dev)
        slots = n_units * N_OCTAVES
        self.sk_pri = torch.full((slots, samples), EMPTY_PRIORITY, dtype=torch.int64, device=dev)
        self.sk_ctx = torch.full((slots, samples), -1, dtype=torch.int64, device=dev)
        self.sk_val = torch.zeros((slots, samples), device=dev)

    # ---- per batch -------------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        B, T, U = batch.acts.shape
        x = batch.acts.float().reshape(B * T, U)  # [B, T, U] -> [B*T, U]
        invalid_rows = batch.invalid.reshape(-1).nonzero().squeeze(1)
        self._token_stats(x, invalid_rows, batch.first_token)
        bias = torch.zeros((B, T, 1), device=x.device).masked_fill_(batch.invalid.unsqueeze(-1), float("-inf"))
        ctx_max = (x.view(B, T, U) + bias).amax(1)  # [B, U]
        self.max = torch.maximum(self.max, ctx_max.amax(0))
        ctx_max = ctx_max.masked_fill(~(ctx_max > 0), float("-inf"))  # only firing contexts
        self._merge_top(ctx_max.T.contiguous(), batch.contexts)
        self._sketch(ctx_max, batch.contexts)

    def _token_stats(self, x: torch.Tensor, invalid_rows: torch.Tensor, first_token: int) -> None:
        fires = x.view(torch.int32).clamp(0, 1)  # 1 exactly where the float is > 0
        self.fire += fires.sum(0, dtype=torch.int32)
        self.total += x.sum(0, dtype=torch.float64)
        self.n_tokens += x.shape[0] - invalid_rows.numel()
        if invalid_rows.numel():
            bad = x.index_select(0, invalid_rows)
            self.fire -= bad.view(torch.int32).clamp(0, 1).sum(0, dtype=torch.int32)
            self.total -= bad.sum(0, dtype=torch.float64)
        offset = (-first_token) % self.hist_stride
        rows = torch.arange(offset, x.shape[0], self.hist_stride, device=x.device)
        if invalid_rows.numel():
            rows = rows[~torch.isin(rows, invalid_rows)]
        self._histogram(x.index_select(0, rows))

    def _histogram(self, x: torch.Tensor) -> None:
        flat = hist_bins(x) + (self.units - self.units[0]).mul(N_HIST_BINS)  # [N, U] bin ids per unit
        self.hist += torch.bincount(flat.reshape(-1), minlength=self.hist.numel())

    def _merge_top(self, values: torch.Tensor, contexts: torch.Tensor) -> None:
        """values [U, B]; contexts ascending and after every context already held."""
        cand_val = torch.cat([self.top_val, values], 1)
        cand_ctx = torch.cat([self.top_ctx, contexts.unsqueeze(0).expand(self.n_units, -1)], 1)
        # A stable sort keeps held entries (lower contexts) ahead of new ones on ties.
        order = torch.sort(cand_val, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.top_val = cand_val.gather(1, order)
        self.top_ctx = cand_ctx.gather(1, order)

    def _sketch(self, ctx_max: torch.Tensor, contexts: torch.Tensor) -> None:
        b_idx, u_idx = (ctx_max > 0).nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return
        values = ctx_max[b_idx, u_idx]
        ctx = contexts[b_idx]
        pri = priority(ctx, self.units[u_idx], self.seed)
        slot = u_idx * N_OCTAVES + octave(values)
        keep = pri <= self.sk_pri[slot, -1]  # no worse than the slot's current last: a candidate
        if keep.any():
            self._sketch_insert(slot[keep], pri[keep], ctx[keep], values[keep])

    def _sketch_insert(self, slot: torch.Tensor, pri: torch.Tensor, ctx: torch.Tensor, val: torch.Tensor) -> None:
        rows = torch.unique(slot)
        s = self.samples
        all_slot = torch.cat([rows.repeat_interleave(s), slot])
        all_pri = torch.cat([self.sk_pri[rows].reshape(-1), pri])
        all_ctx = torch.cat([self.sk_ctx[rows].reshape(-1), ctx])
        all_val = torch.cat([self.sk_val[rows].reshape(-1), val])
        order = _lexsort(all_slot, all_pri, all_ctx)
        all_slot, all_pri, all_ctx, all_val = all_slot[order], all_pri[order], all_ctx[order], all_val[order]
        first = torch.searchsorted(all_slot, all_slot, right=False)
        rank = torch.arange(all_slot.numel(), device=slot.device) - first
        keep = rank < s
        self.sk_pri[all_slot[keep], rank[keep]] = all_pri[keep]
        self.sk_ctx[all_slot[keep], rank[keep]] = all_ctx[keep]
        self.sk_val[all_slot[keep], rank[keep]] = all_val[keep]

    # ---- merging and results ---------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        names = ["n_tokens", "fire", "total", "max", "hist", "top_val", "top_ctx", "sk_pri", "sk_ctx", "sk_val"]
        return {name: getattr(self, name).detach().cpu().contiguous() for name in names}

    def merge_state(self, other: dict[str, torch.Tensor]) -> None:
        """Add another accumulator's state (any context order): the result is exact."""
        dev = self.fire.device
        o = {name: t.to(dev) for name, t in other.items()}
        self.n_tokens += o["n_tokens"]
        self.fire += o["fire"]
        self.total += o["total"]
        self.max = torch.maximum(self.max, o["max"])
        self.hist += o["hist"]
        val = torch.cat([self.top_val, o["top_val"]], 1)
        ctx = torch.cat([self.top_ctx, o["top_ctx"]], 1)
        ctx_key = torch.where(ctx < 0, torch.iinfo(torch.int64).max, ctx)
        order = torch.sort(ctx_key, dim=1, stable=True).indices
        val, ctx = val.gather(1, order), ctx.gather(1, order)
        order = torch.sort(val, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.top_val, self.top_ctx = val.gather(1, order), ctx.gather(1, order)
        pri = torch.cat([self.sk_pri, o["sk_pri"]], 1)
        sctx = torch.cat([self.sk_ctx, o["sk_ctx"]], 1)
        sval = torch.cat([self.sk_val, o["sk_val"]], 1)
        order = torch.sort(torch.where(sctx < 0, torch.iinfo(torch.int64).max, sctx), dim=1, stable=True).indices
        pri, sctx, sval = pri.gather(1, order), sctx.gather(1, order), sval.gather(1, order)
        order = torch.sort(pri, dim=1, stable=True).indices[:, : self.samples]
        self.sk_pri, self.sk_ctx, self.sk_val = pri.gather(1, order), sctx.gather(1, order), sval.gather(1, order)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], *, seed: int, hist_stride: int,
                   unit_offset: int = 0) -> UnitAccumulator:
        n_units, k = state["top_val"].shape
        acc = cls(n_units, k=k, samples=state["sk_pri"].shape[1], hist_stride=hist_stride, seed=seed,
                  unit_offset=unit_offset)
        acc.merge_state(state)
        return acc


def _lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """Indices that sort by the first key, then the second, ... (all int64)."""
    order = torch.arange(keys[0].numel(), device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


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
    """Per-unit results of a (merged) state, on the CPU."""
    n_tokens = int(state["n_tokens"])
    n_units, k = state["top_val"].shape
    s = state["sk_pri"].shape[1]
    hist = state["hist"].view(n_units, N_HIST_BINS).tolist()
    top_val, top_ctx = state["top_val"].tolist(), state["top_ctx"].tolist()
    pri = state["sk_pri"].view(n_units, N_OCTAVES, s)
    ctx = state["sk_ctx"].view(n_units, N_OCTAVES, s).tolist()
    val = state["sk_val"].view(n_units, N_OCTAVES, s).tolist()
    filled = (pri < EMPTY_PRIORITY).tolist()
    flat_pri = pri.tolist()
    fire, total, mx = state["fire"].tolist(), state["total"].tolist(), state["max"].tolist()
    out = []
    for u in range(n_units):
        top = [(c, v) for c, v in zip(top_ctx[u], top_val[u], strict=True) if c >= 0 and v > 0]
        groups: list[tuple[int, list[tuple[int, float]]]] = []
        pool: list[tuple[int, int, float]] = []
        for bucket in range(N_OCTAVES - 1, -1, -1):
            members = [(ctx[u][bucket][j], val[u][bucket][j]) for j in range(s) if filled[u][bucket][j]]
            pool.extend((flat_pri[u][bucket][j], ctx[u][bucket][j], val[u][bucket][j])
                        for j in range(s) if filled[u][bucket][j])
            if members and len(groups) < n_intervals:
                groups.append((bucket, members))
        random = [(c, v) for _, c, v in sorted(pool)[:s]]
        out.append(UnitSummary(
            n_tokens=n_tokens, fire_count=fire[u], mean=total[u] / n_tokens if n_tokens else 0.0,
            max=mx[u], hist=hist[u], top=top, intervals=groups, random=random,
        ))
    return out
