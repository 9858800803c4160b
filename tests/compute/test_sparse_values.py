"""The SAE accumulator's kept per-token values: each kept pair's activations computed apart,
invalid positions included (a BOS with non-zero latents), also when the pairs are copied out in
several chunks, and the same pairs as the dense accumulator keeps."""

from __future__ import annotations

import pytest
import torch

from workers.compute import values
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import Batch, UnitAccumulator


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    acts = (torch.randn(30, 10, 7, generator=g) * torch.exp(torch.randn(1, 1, 7, generator=g))).clamp(min=0)
    acts[acts < 0.4] = 0.0  # mostly zero, as SAE latents
    invalid = torch.zeros(30, 10, dtype=torch.bool)
    invalid[:, 0] = True  # a BOS-like position, with non-zero activations there
    invalid[4, 5:] = True  # padding
    acts[:, 0] += 0.5
    acts[9, 3:, 1] = 2.0  # a tie for the first maximum
    return acts, invalid


@pytest.mark.parametrize("chunk_pairs", [1, 3, 1000])
def test_kept_values_from_non_zeros_are_the_activations(chunk_pairs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "GATHER_VALUES", chunk_pairs * 10)
    acts, invalid = _data()
    sparse = SparseUnitAccumulator(7, k=4, samples=3, hist_stride=3, seed=5, n_intervals=2)
    dense = UnitAccumulator(7, k=4, samples=3, hist_stride=3, seed=5, n_intervals=2, fused=False)
    for start in range(0, 30, 4):
        idx = torch.arange(start, min(start + 4, 30))
        for acc in (sparse, dense):
            acc.update(Batch(acts[idx], idx, invalid[idx], start * 10))
    state, reference = sparse.state(), dense.state()
    assert torch.equal(state["ex_key"], reference["ex_key"])
    assert state["ex_key"].numel() > 40
    for row, key in enumerate(state["ex_key"].tolist()):
        unit, context = key >> 32, key & 0xFFFFFFFF
        want = acts[context, :, unit]
        assert torch.equal(state["ex_val"][row], want.half()), (unit, context)
        assert int(state["ex_pos"][row]) == int(want.masked_fill(invalid[context], -1.0).argmax())
