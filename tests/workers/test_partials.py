"""A shard's stored partial state: the kept values of mostly-zero units go as their non-zeros and
come back bit for bit (signed zeros included); dense values and states without kept values are
stored as they are."""

from __future__ import annotations

import torch

from workers.pipeline.harvest.partials import PACKED, pack, unpack


def _state(values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"fire": torch.arange(5), "ex_key": torch.arange(values.shape[0]), "ex_pos": torch.zeros(values.shape[0]),
            "ex_val": values}


def test_sparse_values_are_packed_and_come_back_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(50, 64, generator=g)
    values[values < 0.95] = 0.0
    values[3] = 0.0  # a row without a non-zero
    values[7, 5] = -0.0  # bits that are not zero
    values[9, 63] = 65504.0
    state = _state(values.half())
    packed = pack(state)
    assert "ex_val" not in packed and int(packed["ex_val_counts"][3]) == 0
    stored = sum(packed[key].numel() * packed[key].element_size() for key in PACKED)
    assert stored < state["ex_val"].numel() * 2 // 3  # bytes
    back = unpack(packed)
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
    assert torch.equal(back["ex_val"].view(torch.int16), state["ex_val"].view(torch.int16))


def test_dense_values_and_empty_states_are_stored_as_they_are() -> None:
    dense = _state(torch.rand(10, 16).half() + 0.1)
    assert pack(dense) is dense and unpack(dense) is dense
    empty = _state(torch.zeros(0, 0, dtype=torch.float16))
    assert pack(empty) is empty
    no_values = {"fire": torch.arange(3)}
    assert pack(no_values) is no_values
