"""A NaN or an infinity in the activations fails the harvest with a clear message, on every path."""

from __future__ import annotations

import pytest
import torch

from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import Batch, NonFiniteActivation, UnitAccumulator

BAD = pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
# The compiled CPU pass, torch's passes (what a GPU runs) in float32 and float16, and the sparse
# path of SAE latents.
PATHS = pytest.mark.parametrize("path", ["fused", "torch", "torch-half", "sparse", "sparse-half"])


def _accumulator(path: str, units: int) -> UnitAccumulator:
    if path.startswith("sparse"):
        return SparseUnitAccumulator(units, k=3, samples=2, hist_stride=3, seed=0)
    return UnitAccumulator(units, k=3, samples=2, hist_stride=3, seed=0, fused=path == "fused")


def _batches(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    acts = torch.rand(8, 5, 6, generator=torch.Generator().manual_seed(0)) * 4
    invalid = torch.zeros(8, 5, dtype=torch.bool)
    invalid[:, 0] = True  # a BOS-like position
    return acts.half() if path.endswith("half") else acts, invalid


@PATHS
@BAD
def test_a_bad_activation_names_its_context_and_unit(path: str, bad: float) -> None:
    acts, invalid = _batches(path)
    acc = _accumulator(path, 6)
    acc.update(Batch(acts[:4], torch.arange(10, 14), invalid[:4], 50))  # a clean first batch
    acts[6, 3, 4] = bad  # context 16 (the batch's third), unit 4
    with pytest.raises(NonFiniteActivation) as caught:
        acc.update(Batch(acts[4:], torch.arange(14, 18), invalid[4:], 70))
    assert (caught.value.context, caught.value.unit) == (16, 4)
    assert "context 16" in str(caught.value) and "unit 4" in str(caught.value)


@pytest.mark.parametrize("path", ["torch-half", "sparse-half"])
def test_a_float16_overflow_is_caught(path: str) -> None:
    acts, invalid = _batches(path)
    acts[2, 1, 0] = torch.tensor(70000.0).half()  # past float16's largest finite value: inf
    with pytest.raises(NonFiniteActivation, match="context 2, unit 0"):
        _accumulator(path, 6).update(Batch(acts, torch.arange(8), invalid, 0))


@PATHS
def test_a_bad_value_at_a_left_out_position_is_ignored(path: str) -> None:
    acts, invalid = _batches(path)
    acts[3, 0, 2] = float("nan")  # on the BOS-like position, which no statistic reads
    acc = _accumulator(path, 6)
    acc.update(Batch(acts, torch.arange(8), invalid, 0))
    assert int(acc.state()["n_tokens"]) == 32
