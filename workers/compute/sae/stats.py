"""Streaming statistics of SAE latents from their non-zeros.

SAE latents are non-negative and mostly zero (a TopK SAE: k of d_sae per token), so every
per-token statistic of :class:`UnitAccumulator` can be read off the non-zeros alone. The state is
the same, and merges with any other accumulator's state; fire counts, histogram, maxima, top-k
and samples are identical, sums equal up to float rounding order.
"""

from __future__ import annotations

import torch

from workers.compute.stats import Batch, NonFiniteActivation, UnitAccumulator, _fixed, hist_bins


class SparseUnitAccumulator(UnitAccumulator):
    """A :class:`UnitAccumulator` for non-negative activations (zero where a unit is off)."""

    def update(self, batch: Batch) -> None:
        B, T, U = batch.acts.shape
        x = batch.acts.reshape(B * T, U)  # [B, T, U] -> [B*T, U]
        valid = ~batch.invalid.reshape(-1)
        rows, units = (x != 0).nonzero(as_tuple=True)  # NaN too, which `x > 0` would drop
        keep = valid[rows]
        rows, units = rows[keep], units[keep]
        values = x[rows, units].float()
        self._check_finite(values, rows // T, units, batch.contexts)
        positive = values > 0
        rows, units, values = rows[positive], units[positive], values[positive]
        self.n_tokens += int(valid.sum())
        self.fire += torch.bincount(units, minlength=U)
        self.total += _fixed(torch.zeros(U, device=x.device).index_add_(0, units, values))
        self._sparse_histogram(rows, units, values, valid, batch.first_token)
        ctx_max = self._context_max(rows // T, units, values, valid.view(B, T).any(1), U)
        self.max = torch.maximum(self.max, ctx_max.amax(0))
        ctx_max = ctx_max.masked_fill(~(ctx_max > 0), float("-inf"))  # only firing contexts
        entered_top = self._merge_top(ctx_max.T.contiguous(), batch.contexts)
        self._keep_values(batch, entered_top.T | self._sketch(ctx_max, batch.contexts))

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
    def _check_finite(values: torch.Tensor, ctx_rows: torch.Tensor, units: torch.Tensor,
                      contexts: torch.Tensor) -> None:
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])  # the first in token order: the lowest context
            raise NonFiniteActivation(context=int(contexts[ctx_rows[i]]), unit=int(units[i]), value=float(values[i]))

    @staticmethod
    def _context_max(ctx_rows: torch.Tensor, units: torch.Tensor, values: torch.Tensor, has_valid: torch.Tensor,
                     n_units: int) -> torch.Tensor:
        """[B, U]: each context's max over its valid tokens (0 where the unit stays off, -inf for
        a context without valid tokens)."""
        base = torch.where(has_valid, 0.0, float("-inf"))[:, None].expand(-1, n_units).contiguous()
        flat = base.view(-1)
        flat.scatter_reduce_(0, ctx_rows * n_units + units, values, reduce="amax")
        return base
