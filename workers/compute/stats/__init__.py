"""Streaming per-unit statistics: exact top-k, sampled intervals, density, histogram.

Everything is mergeable exactly, so shards computed apart combine into the result of one pass:

* top-k contexts by each context's max activation, ties broken by the lower context index
  (one int64 key per entry: the value's float bits, then the inverted context index, so a
  plain top-k over keys is exact and deterministic);
* density (tokens with activation > 0), mean, max;
* a histogram on a fixed bin grid read off the float32 bits (four bins per octave, no log);
* interval and random samples from a bottom-s sketch: each (unit, context) gets a hash priority,
  and per (unit, octave of the context's max) the ``s`` lowest priorities are kept. Any union of
  octaves then yields its exact bottom-s sample, so sampling never needs a second pass.

Dense activations stay on their device; only these small states ever move to the CPU.

The package's parts: ``bins`` (histogram bins, octaves, hash priorities), ``keys`` (top-k keys and
fixed-point sums), ``sketch`` (the bottom-s sketch's insert and merge), ``finite`` (the stop on
NaN or Inf), ``buffers`` (the compiled pass and shared scratch), ``summary`` (per-unit results).
The accumulator that ties them together lives here; every public name is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.compute.grid import HIST_KEY_LO, N_HIST_BINS, N_OCTAVES, OCTAVE_LO
from workers.compute.stats import sketch
from workers.compute.stats.bins import MASK31, hist_bin_lower_edges, hist_bins, octave, octave_range, priority
from workers.compute.stats.buffers import SCRATCH as _SCRATCH  # noqa: F401 (cleared by tests)
from workers.compute.stats.buffers import VALUES as _VALUES
from workers.compute.stats.buffers import kernels as _kernels
from workers.compute.stats.buffers import scratch as _scratch
from workers.compute.stats.finite import NonFiniteActivation, check_finite
from workers.compute.stats.keys import EMPTY_KEY, FIXED_SCALE, decode_top_keys, top_keys
from workers.compute.stats.keys import to_fixed as _fixed
from workers.compute.stats.summary import UnitSummary, summarize
from workers.compute.values import EMPTY_PRIORITY, ValueStore, candidate_keys, pair_keys

__all__ = [
    "EMPTY_KEY", "FIXED_SCALE", "HIST_KEY_LO", "MASK31", "N_HIST_BINS", "N_OCTAVES", "OCTAVE_LO",
    "Batch", "NonFiniteActivation", "UnitAccumulator", "UnitSummary", "check_finite", "decode_top_keys",
    "hist_bin_lower_edges", "hist_bins", "octave", "octave_range", "priority", "summarize", "top_keys",
]

# Sketch candidates buffered before a bulk insert on the torch path (about 1 MB; the compiled
# CPU pass inserts directly): larger batches of inserts cost no less per candidate (measured
# from 8k to 200k), and every buffered one is memory a short run does not touch and a long one does.
PENDING_LIMIT = 32_768


@dataclass
class Batch:
    """One forward pass's worth of activations for one source."""

    acts: torch.Tensor | None
    """[B, T, U] activations (any float dtype; reduced in float32); None where ``top`` holds them."""
    contexts: torch.Tensor
    """[B] global context indices (int64), ascending."""
    invalid: torch.Tensor
    """[B, T] True at positions left out of every statistic (padding, special tokens)."""
    first_token: int
    """Global index of the batch's first token (context index x context length)."""
    top: tuple[torch.Tensor, torch.Tensor] | None = None
    """A TopK SAE's codes as (latent indices int64, values) [B, T, k], zero at every other latent:
    read by the sparse accumulator instead of scanning the dense [B, T, U] codes for non-zeros."""

    def dense(self) -> torch.Tensor:
        """``acts`` (for the accumulators that read every activation)."""
        if self.acts is None:
            raise ValueError("this accumulator needs the dense activations, and the batch holds only top-k codes")
        return self.acts


class UnitAccumulator:
    """The mergeable state of ``n_units`` units; see the module docstring."""

    def __init__(self, n_units: int, *, k: int, samples: int, hist_stride: int, seed: int,
                 unit_offset: int = 0, device: torch.device | str = "cpu", fused: bool | None = None,
                 n_intervals: int | None = None) -> None:
        self.n_units, self.k, self.samples, self.hist_stride, self.seed = n_units, k, samples, hist_stride, seed
        # Per-token values of the pairs that may become examples (workers.compute.values); the
        # interval octaves summarize will show (None: keep every used octave's).
        self.n_intervals = n_intervals
        self.store = ValueStore(n_units)
        dev = torch.device(device)
        # One compiled pass per batch on the CPU (workers.compute.kernels), torch's passes
        # elsewhere; None: decided at the first batch (numba is imported then, if at all).
        self.fused = fused if dev.type == "cpu" else False
        self.units = torch.arange(n_units, device=dev, dtype=torch.int64) + unit_offset
        self.n_tokens = torch.zeros((), dtype=torch.int64, device=dev)
        self.fire = torch.zeros(n_units, dtype=torch.int64, device=dev)
        self.total = torch.zeros(n_units, dtype=torch.int64, device=dev)
        self.max = torch.full((n_units,), float("-inf"), device=dev)
        self.hist = torch.zeros(n_units * N_HIST_BINS, dtype=torch.int64, device=dev)
        self.top_key = torch.full((n_units, k), EMPTY_KEY, dtype=torch.int64, device=dev)
        self._hist_offsets = torch.arange(n_units, device=dev, dtype=torch.int32) * N_HIST_BINS
        self._ones = torch.ones(1, dtype=torch.int64, device=dev)
        slots = n_units * N_OCTAVES
        self._slot_base = torch.arange(n_units, device=dev, dtype=torch.int64) * N_OCTAVES
        self.sk_pri = torch.full((slots, samples), EMPTY_PRIORITY, dtype=torch.int64, device=dev)
        self.sk_ctx = torch.full((slots, samples), -1, dtype=torch.int64, device=dev)
        self.sk_val = torch.zeros((slots, samples), device=dev)
        # Sketch candidates wait here and are inserted in bulk: one large sort costs far less
        # than many small ones. Thresholds read while they wait are stale (too permissive),
        # which only admits extra candidates; the insert still keeps exactly the lowest s. They
        # wait in buffers that grow once and are reused, not in small tensors kept alive between
        # the forward pass's large temporaries (that fragmented the heap: RSS grew ~4 MB a batch).
        self._pending: tuple[torch.Tensor, ...] = ()
        self._pending_n = 0
        # The last batch's top-k keys wait in the columns after the first k of this buffer
        # (which hold a copy of top_key while merging), merged when the next batch comes.
        self._top_buf: torch.Tensor | None = None
        self._top_pending_n = 0
        # Reused buffers of the dense token statistics (see _token_stats).
        self._hist_t: torch.Tensor | None = None
        self._ones_t: torch.Tensor | None = None

    # ---- per batch -------------------------------------------------------------------------
    def update(self, batch: Batch) -> None:
        if self.fused is None:
            self.fused = _kernels() is not None
        if self.fused:
            self._update_fused(batch)
            return
        acts = batch.dense()
        B, T, U = acts.shape
        x = acts.float().reshape(B * T, U)  # [B, T, U] -> [B*T, U]
        invalid_rows = batch.invalid.reshape(-1).nonzero().squeeze(1)
        # Invalid rows are blanked in place (0 for sums, -inf for maxima) and restored after:
        # one pass per statistic instead of masked copies. When `x` is the model's own tensor,
        # the restore makes the rest of the forward pass see exactly what it would have.
        saved = x.index_select(0, invalid_rows)
        x.index_fill_(0, invalid_rows, 0.0)
        try:
            self._token_stats(x.view(B, T, U), invalid_rows, batch.first_token, batch.contexts)
            x.index_fill_(0, invalid_rows, float("-inf"))
            ctx_max = x.view(B, T, U).amax(1)  # [B, U]
        finally:
            x.index_copy_(0, invalid_rows, saved)
        self.max = torch.maximum(self.max, ctx_max.amax(0))
        ctx_max = ctx_max.masked_fill(~(ctx_max > 0), float("-inf"))  # only firing contexts
        entered_top = self._merge_top(ctx_max.T.contiguous(), batch.contexts)
        self._keep_values(batch, entered_top.T | self._sketch(ctx_max, batch.contexts))

    def _keep_values(self, batch: Batch, admitted: torch.Tensor) -> None:
        """Keep the per-token values of the batch's admitted pairs ([B, U]); sweep the store when
        it has grown."""
        self.store.add(batch.dense(), batch.invalid, batch.contexts, admitted)
        if self.store.full:
            self._sweep()

    def _sweep(self) -> None:
        """Drop the kept values that can no longer be chosen (on the exact state: waiting top-k
        keys and sketch candidates are merged first)."""
        self._flush_sketch()
        self._flush_top()
        self.store.keep(candidate_keys(self.top_key, self.sk_pri, self.sk_ctx, self.n_intervals))

    def _kth_key(self) -> torch.Tensor:
        """[U] each unit's lowest held top-k key (-1 while fewer than k are held): a context
        beating it enters the top-k. Keys still waiting to merge are not counted, so it admits
        a few extra, never too few."""
        return self.top_key.min(1).values

    def _update_fused(self, batch: Batch) -> None:
        """The whole update in one compiled pass over the batch (CPU only; see kernels)."""
        kernels = _kernels()
        assert kernels is not None, "the fused pass needs numba"
        acts = batch.dense()
        B, T, U = acts.shape
        x = acts.float().reshape(B * T, U).contiguous()
        valid = ~batch.invalid.reshape(-1)
        self.n_tokens += int(valid.sum())
        threads = torch.get_num_threads()
        kernels.set_threads(threads)
        chunk = -(-U // threads)  # each thread's units
        admit = torch.empty(U, B, dtype=torch.uint8)
        pos = torch.empty(U, B, dtype=torch.int64)
        values = _scratch(U * B * T, x.device, _VALUES).view(U, B, T)
        args = [x, x.view(torch.int32), valid, T, batch.contexts, self.units, self.seed,
                (-batch.first_token) % self.hist_stride, self.hist_stride, HIST_KEY_LO - 1, N_HIST_BINS,
                OCTAVE_LO, N_OCTAVES, chunk, self.fire, self.total, self.max, self._hist_table(x.device),
                self._top_slots(B), self.sk_pri, self.sk_ctx, self.sk_val, bad := torch.full((-(-U // chunk),), -1),
                self._kth_key(), admit, pos, values]
        kernels.batch_stats(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args))
        if bool((bad >= 0).any()):  # each thread's first context (then unit) with a non-finite sum
            first = int(bad[bad >= 0].min())
            sums = torch.full((B, U), 0.0)
            sums[first // U, first % U] = float("nan")
            check_finite(sums, x.masked_fill(~valid[:, None], 0.0).view(B, T, U), batch.contexts)
        u_idx, b_idx = admit.nonzero(as_tuple=True)
        # Rounded to float16 as they are copied into the store (no float16 temporary).
        self.store.append(pair_keys(u_idx, batch.contexts[b_idx]), pos[u_idx, b_idx],
                          values[u_idx, b_idx].clamp_(-65504, 65504))
        if self.store.full:
            self._sweep()

    def _token_stats(self, x: torch.Tensor, invalid_rows: torch.Tensor, first_token: int,
                     contexts: torch.Tensor) -> None:
        """Token statistics of ``x`` [B, T, U] whose invalid rows hold zeros."""
        # Sums over T first, as a batched product with a row of ones (one read of x, vectorised
        # along the units and threaded); fire counts the same way over (x > 0) written as floats
        # into a reused scratch buffer (exact below 2^24 per batch): a fresh 12 MB temporary per
        # layer costs page faults, and bool or int32 reductions run several times slower on two
        # threads.
        B = x.shape[0]
        if self._ones_t is None or self._ones_t.shape[0] < B or self._ones_t.shape[2] != x.shape[1]:
            self._ones_t = torch.ones(B, 1, x.shape[1], device=x.device)
        ones = self._ones_t[:B]
        positive = torch.gt(x, 0, out=_scratch(x.numel(), x.device).view(x.shape))
        self.fire += torch.bmm(ones, positive).sum(0)[0].long()  # [B, 1, U] -> [U]
        context_sums = torch.bmm(ones, x)[:, 0]  # [B, U]
        check_finite(context_sums, x, contexts)
        self.total += _fixed(context_sums).sum(0)  # fixed point per context
        flat = x.view(-1, x.shape[2])
        self.n_tokens += flat.shape[0] - invalid_rows.numel()
        offset = (-first_token) % self.hist_stride
        self._histogram(flat[offset :: self.hist_stride])  # a strided view: no copy
        # The blanked rows in the subsample each put one zero per unit into bin 0.
        sampled_invalid = int(((invalid_rows - offset) % self.hist_stride == 0).sum())
        self.hist[self._hist_offsets] -= sampled_invalid

    def _histogram(self, x: torch.Tensor) -> None:
        """Count ``x`` [N, U] into the bins: a scatter of ones along the bins of a [bins, U]
        table (the layout where the scatter runs over units in parallel), folded into the
        unit-major ``hist`` when the state is read."""
        bins = hist_bins(x).long()  # [N, U]
        self._hist_table(x.device).scatter_add_(0, bins, self._ones.view(1, 1).expand_as(bins))

    def _hist_table(self, device: torch.device) -> torch.Tensor:
        if self._hist_t is None:
            with torch.inference_mode(False):  # a normal tensor: updated in place in any mode
                self._hist_t = torch.zeros(N_HIST_BINS, self.n_units, dtype=torch.int64, device=device)
        return self._hist_t

    def _fold_hist(self) -> None:
        if self._hist_t is not None:
            self.hist += self._hist_t.T.reshape(-1)
            self._hist_t = None

    def _merge_top(self, values: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """values [U, B] (-inf where not firing), contexts [B]; returns [U, B] True where the
        context enters the unit's top-k (as far as the merged keys tell)."""
        keys = top_keys(values, contexts.unsqueeze(0).expand_as(values))
        self._top_slots(values.shape[1]).copy_(keys)
        return keys > self._kth_key()[:, None]

    def _top_slots(self, n: int) -> torch.Tensor:
        """A [U, n] view of the top-k buffer to write one batch's keys into, the previous batch's
        merged first: its admission threshold (_kth_key) is then exact up to this batch, and
        every pair it admits beyond the top-k is a copy of values the store holds for nothing
        (merging only every fourth batch admitted every firing context of the first four)."""
        width = self.k + n
        if self._top_buf is None or self._top_buf.shape[1] < width:
            self._flush_top()
            with torch.inference_mode(False):  # a normal tensor: written in any mode
                self._top_buf = torch.empty(self.n_units, width, dtype=torch.int64, device=self.top_key.device)
        elif self.k + self._top_pending_n + n > self._top_buf.shape[1]:
            self._flush_top()
        start = self.k + self._top_pending_n
        self._top_pending_n += n
        return self._top_buf[:, start : start + n]

    def _flush_top(self) -> None:
        """Merge the waiting keys into the top-k, unsorted while streaming (half the cost); state()
        sorts once. Keys are unique (they hold the context), so the kept set is the same either way."""
        if self._top_pending_n and self._top_buf is not None:
            merged = self._top_buf[:, : self.k + self._top_pending_n]
            merged[:, : self.k] = self.top_key
            self._top_pending_n = 0
            self.top_key = torch.topk(merged, self.k, dim=1, sorted=False).values

    def _sketch(self, ctx_max: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """ctx_max [B, U] (-inf where not firing): queue every (context, unit) whose priority is
        no worse than its slot's current last, a few in a thousand after warm-up; returns them
        as a [B, U] mask."""
        # Dense over [B, U]: elementwise ops cost less than gathering the firing entries first.
        pri = priority(contexts.unsqueeze(1), self.units, self.seed)
        slot = self._slot_base + octave(ctx_max)
        keep = (pri <= self.sk_pri.view(-1)[slot * self.samples + (self.samples - 1)]) & (ctx_max > 0)
        b_idx, u_idx = keep.nonzero(as_tuple=True)
        if b_idx.numel():
            self._queue_candidates((slot[b_idx, u_idx], pri[b_idx, u_idx], contexts[b_idx], ctx_max[b_idx, u_idx]))
        return keep

    def _queue_candidates(self, candidates: tuple[torch.Tensor, ...]) -> None:
        """(slot, priority, context, value) of sketch candidates, in ascending context order
        per slot (copied: they may be views of reused buffers)."""
        end = self._pending_n + candidates[0].numel()
        if not self._pending or self._pending[0].numel() < end:
            with torch.inference_mode(False):  # normal tensors: written in any mode
                grown = tuple(torch.empty(max(end, 2 * self._pending_n, 1 << 14), dtype=t.dtype, device=t.device)
                              for t in candidates)
            for new, old in zip(grown, self._pending, strict=False):
                new[: self._pending_n] = old[: self._pending_n]
            self._pending = grown
        for buffer, part in zip(self._pending, candidates, strict=True):
            buffer[self._pending_n : end] = part
        self._pending_n = end
        if self._pending_n >= PENDING_LIMIT:
            self._flush_sketch()

    def _flush_sketch(self) -> None:
        if self._pending_n:
            slot, pri, ctx, val = (t[: self._pending_n] for t in self._pending)
            self._pending_n = 0
            sketch.insert((self.sk_pri, self.sk_ctx, self.sk_val), slot, pri, ctx, val)

    # ---- merging and results ---------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The state on the CPU; sketch slots are stored sparsely (most octaves stay empty). The
        kept values (``ex_*``) are only those of the pairs that summarize could choose."""
        self._sweep()
        self._fold_hist()
        names = ["n_tokens", "fire", "total", "max", "hist", "top_key"]
        out = {name: getattr(self, name).detach().cpu().contiguous() for name in names}
        out["top_key"] = torch.sort(out["top_key"], dim=1, descending=True).values  # best first
        used = (self.sk_pri[:, 0] < EMPTY_PRIORITY).nonzero().squeeze(1)
        out["sk_rows"] = used.cpu()
        out["sk_shape"] = torch.tensor(list(self.sk_pri.shape))
        for name in ("sk_pri", "sk_ctx", "sk_val"):
            out[name] = getattr(self, name)[used].cpu().contiguous()
        out.update(self.store.state())
        return out

    def merge_state(self, other: dict[str, torch.Tensor]) -> None:
        """Add another accumulator's state (any context order): the result is exact."""
        self._flush_sketch()
        self._flush_top()
        self._fold_hist()
        dev = self.fire.device
        o = {name: t.to(dev) for name, t in {**other, **sketch.dense(other)}.items()}
        self.n_tokens += o["n_tokens"]
        self.fire += o["fire"]
        self.total += o["total"]
        self.max = torch.maximum(self.max, o["max"])
        self.hist += o["hist"]
        self.top_key = torch.topk(torch.cat([self.top_key, o["top_key"]], 1), self.k, dim=1).values
        self.sk_pri, self.sk_ctx, self.sk_val = sketch.merge(
            (self.sk_pri, self.sk_ctx, self.sk_val), (o["sk_pri"], o["sk_ctx"], o["sk_val"]), self.samples)
        if "ex_key" in other:  # partials stored before values were kept have none
            self.store.merge(other, dev)
        self._sweep()

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], *, seed: int, hist_stride: int,
                   unit_offset: int = 0, n_intervals: int | None = None) -> UnitAccumulator:
        n_units, k = state["top_key"].shape
        acc = cls(n_units, k=k, samples=int(state["sk_shape"][1]), hist_stride=hist_stride, seed=seed,
                  unit_offset=unit_offset, n_intervals=n_intervals)
        acc.merge_state(state)
        return acc
