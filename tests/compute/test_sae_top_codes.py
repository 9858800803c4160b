"""A TopK SAE's batches read from its top-k codes (no dense [B, T, d_sae] codes): the accumulator's
state, kept values and errors are those of the dense codes, bit for bit; the harvest pass gives
the codes to SAE sources that no correlation reads densely."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny_sae import random_sae
from workers.compute import values
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import Batch, NonFiniteActivation

D_IN, D_SAE, K = 12, 40, 4


def _inputs(n_contexts: int = 28, T: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n_contexts, T, D_IN, generator=g) * 2
    invalid = torch.zeros(n_contexts, T, dtype=torch.bool)
    invalid[:, 0] = True  # a BOS-like position, with codes there too
    invalid[5, 4:] = True  # padding
    invalid[11] = True  # a context without a valid token
    x[7, 2:6] = x[7, 2]  # a repeated token: ties for the first maximum
    return x, invalid


def _accumulator() -> SparseUnitAccumulator:
    return SparseUnitAccumulator(D_SAE, k=3, samples=2, hist_stride=4, seed=9, unit_offset=7, n_intervals=2)


def _run(x: torch.Tensor, invalid: torch.Tensor, *, top: bool, batch: int = 4) -> dict[str, torch.Tensor]:
    sae = random_sae(D_IN, D_SAE, architecture="topk", k=K, seed=1)
    acc = _accumulator()
    T = x.shape[1]
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            idx = torch.arange(start, min(start + batch, x.shape[0]))
            if top:
                acc.update(Batch(None, idx, invalid[idx], start * T, top=sae.encode_top(x[idx])))
            else:
                acc.update(Batch(sae.encode(x[idx]), idx, invalid[idx], start * T))
        return acc.state()


@pytest.mark.parametrize("min_growth", [1, 4096], ids=["sweep-every-batch", "sweep-rarely"])
def test_state_from_top_codes_equals_the_dense_codes(min_growth: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "MIN_GROWTH", min_growth)
    x, invalid = _inputs()
    want, got = _run(x, invalid, top=False), _run(x, invalid, top=True)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key  # sums too: each unit's codes in token order
    assert want["ex_key"].numel() > 60


def test_kept_values_from_top_codes_are_the_activations() -> None:
    x, invalid = _inputs()
    sae = random_sae(D_IN, D_SAE, architecture="topk", k=K, seed=1)
    with torch.inference_mode():
        dense = sae.encode(x)  # [C, T, d_sae], computed apart
    state = _run(x, invalid, top=True)
    for row, key in enumerate(state["ex_key"].tolist()):
        unit, context = key >> 32, key & 0xFFFFFFFF
        want = dense[context, :, unit]
        assert torch.equal(state["ex_val"][row], want.half()), (unit, context)
        first_max = int(want.masked_fill(invalid[context], -1.0).argmax())
        assert int(state["ex_pos"][row]) == first_max, (unit, context)


def test_top_codes_are_the_dense_codes() -> None:
    sae = random_sae(D_IN, D_SAE, architecture="topk", k=K, seed=1)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        indices, codes = sae.encode_top(x)
        dense = sae.encode(x)
    assert indices.shape == (3, 5, K)
    assert torch.equal(torch.zeros_like(dense).scatter_(-1, indices, codes), dense)


def test_a_bad_code_names_the_same_context_and_unit() -> None:
    T, n_units = 5, 6
    indices = torch.tensor([[0, 3], [5, 1], [2, 4], [1, 0], [3, 2]]).expand(2, T, 2).contiguous()  # [B, T, k]
    codes = torch.rand(2, T, 2, generator=torch.Generator().manual_seed(0)) + 0.5
    codes[1, 3, 0], codes[1, 2, 1], codes[1, 4, 0] = float("nan"), float("inf"), float("nan")  # units 1, 4, 3
    dense = torch.zeros(2, T, n_units).scatter_(-1, indices, codes)
    invalid = torch.zeros(2, T, dtype=torch.bool)
    errors = []
    for batch in (Batch(dense, torch.tensor([8, 9]), invalid, 40),
                  Batch(None, torch.tensor([8, 9]), invalid, 40, top=(indices, codes))):
        acc = SparseUnitAccumulator(n_units, k=2, samples=2, hist_stride=3, seed=0)
        with pytest.raises(NonFiniteActivation) as caught:
            acc.update(batch)
        errors.append((caught.value.context, caught.value.unit))
    assert errors == [(9, 4), (9, 4)]  # the first in token order (row 2 of context 9), then the lowest unit
