"""Streaming statistics of SAE latents from their non-zeros.

SAE latents are non-negative and mostly zero (a TopK SAE: k of d_sae per token), so every
per-token statistic of :class:`UnitAccumulator` can be read off the non-zeros alone. The state is
the same, and merges with any other accumulator's state; fire counts, histogram, maxima, top-k
and samples are identical, sums equal up to float rounding order.

A TopK SAE's batch can come as its top-k codes (``Batch.top``): then the non-zeros are those
codes, and neither the dense [B, T, d_sae] codes nor a scan of them is needed; the kept values of
admitted pairs are scattered from the codes too. Each unit's codes arrive in token order either
way, so the state (sums included) and the kept values are bit for bit those of the dense codes.
"""

from __future__ import annotations

import torch

from workers.compute.stats import Batch, NonFiniteActivation, UnitAccumulator, _fixed, hist_bins
from workers.compute.values import pair_keys


class SparseUnitAccumulator(UnitAccumulator):
    """A :class:`UnitAccumulator` for non-negative activations (zero where a unit is off)."""

    def update(self, batch: Batch) -> None:
        B, T = batch.invalid.shape
        U = self.n_units
        valid = ~batch.invalid.reshape(-1)
        all_rows, all_units, all_values = _entries(batch, U)
        keep = (all_values != 0) & valid[all_rows]  # NaN too, which `x > 0` would drop
        rows, units, values = all_rows[keep], all_units[keep], all_values[keep]
        self._check_finite(values, rows, units, batch.contexts, T, U)
        positive = values > 0
        rows, units, values = rows[positive], units[positive], values[positive]
        self.n_tokens += int(valid.sum())
        self.fire += torch.bincount(units, minlength=U)
        self.total += _fixed(torch.zeros(U, device=values.device).index_add_(0, units, values))
        self._sparse_histogram(rows, units, values, valid, batch.first_token)
        ctx_max = self._context_max(rows // T, units, values, valid.view(B, T).any(1), U)
        self.max = torch.maximum(self.max, ctx_max.amax(0))
        ctx_max = ctx_max.masked_fill(~(ctx_max > 0), float("-inf"))  # only firing contexts
        entered_top = self._merge_top(ctx_max.T.contiguous(), batch.contexts)
        admitted = entered_top.T | self._sketch(ctx_max, batch.contexts)
        if batch.top is None:
            self._keep_values(batch, admitted)
            return
        self._keep_codes(batch, admitted, all_rows, all_units, all_values, valid)

    def _keep_codes(self, batch: Batch, admitted: torch.Tensor, rows: torch.Tensor, units: torch.Tensor,
                    values: torch.Tensor, valid: torch.Tensor) -> None:
        """Keep the admitted pairs' values ([B, U] mask) scattered from every code of the batch
        (zeros and invalid positions included: what the dense codes hold there)."""
        B, T = batch.invalid.shape
        U = self.n_units
        b_idx, u_idx = admitted.nonzero(as_tuple=True)
        n_pairs = b_idx.numel()
        if n_pairs:
            pair_of = torch.full((B * U,), -1, dtype=torch.int64, device=rows.device)
            pair_of[b_idx * U + u_idx] = torch.arange(n_pairs, device=rows.device)
            pair = pair_of[(rows // T) * U + units]
            hit = pair >= 0
            pair, t, v, ok = pair[hit], rows[hit] % T, values[hit].float(), valid[rows[hit]]
            val = torch.zeros(n_pairs, T, dtype=torch.float16, device=rows.device)
            val[pair, t] = v.clamp(-65504, 65504).half()
            # The first maximum over valid tokens: an admitted pair fires, so its maximum (> 0) is
            # one of its valid codes, and every position without a code holds 0.
            best = torch.full((n_pairs,), float("-inf"), device=rows.device).scatter_reduce_(
                0, pair[ok], v[ok], reduce="amax")
            at_max = ok & (v == best[pair])
            pos = torch.full((n_pairs,), T, dtype=torch.int64, device=rows.device).scatter_reduce_(
                0, pair[at_max], t[at_max], reduce="amin")
            self.store.append(pair_keys(u_idx, batch.contexts[b_idx]), pos, val)
        if self.store.full:
            self._sweep()

    def _sparse_histogram(self, rows: torch.Tensor, units: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                          first_token: int) -> None:
        """Every sampled valid token puts each unit in bin 0, except where the unit is non-zero."""
        sampled = (torch.arange(valid.numel(), device=valid.device) + first_token) % self.hist_stride == 0
        self.hist[self._hist_offsets] += int((sampled & valid).sum())
        hit = sampled[rows]
        offsets = self._hist_offsets[units[hit]]
        self.hist.index_add_(0, (offsets + hist_bins(values[hit])).long(), torch.ones_like(offsets, dtype=torch.int64))
        self.hist.index_add_(0, offsets.long(), torch.full_like(offsets, -1, dtype=torch.int64))

    @staticmethod
    def _check_finite(values: torch.Tensor, rows: torch.Tensor, units: torch.Tensor, contexts: torch.Tensor,
                      T: int, n_units: int) -> None:
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            # The first in token order (the lowest context), then the lowest unit.
            i = int(torch.where(bad, rows * n_units + units, torch.iinfo(torch.int64).max).argmin())
            raise NonFiniteActivation(context=int(contexts[rows[i] // T]), unit=int(units[i]), value=float(values[i]))

    @staticmethod
    def _context_max(ctx_rows: torch.Tensor, units: torch.Tensor, values: torch.Tensor, has_valid: torch.Tensor,
                     n_units: int) -> torch.Tensor:
        """[B, U]: each context's max over its valid tokens (0 where the unit stays off, -inf for
        a context without valid tokens)."""
        base = torch.where(has_valid, 0.0, float("-inf"))[:, None].expand(-1, n_units).contiguous()
        flat = base.view(-1)
        flat.scatter_reduce_(0, ctx_rows * n_units + units, values, reduce="amax")
        return base


def _entries(batch: Batch, n_units: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token rows, units, values) of the batch's codes: every top-k code (zeros included) when the
    batch holds them, else the non-zeros of the dense codes; in token order."""
    if batch.top is not None:
        indices, values = batch.top
        k = indices.shape[-1]
        rows = torch.arange(indices.numel() // k, device=indices.device).repeat_interleave(k)
        return rows, indices.reshape(-1), values.reshape(-1).float()
    x = batch.dense().reshape(-1, n_units)  # [B, T, U] -> [B*T, U]
    rows, units = (x != 0).nonzero(as_tuple=True)
    return rows, units, x[rows, units].float()
