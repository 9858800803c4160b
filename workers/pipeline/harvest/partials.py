"""A shard's partial state as it is stored: the kept per-token values of mostly-zero units (SAE
latents: a few non-zero tokens in a context) go as their non-zeros, about a tenth of the bytes to
write, read back, checksum and copy; dense ones (neurons) as they are. Bit for bit either way."""

from __future__ import annotations

import torch

PACKED = ("ex_val_counts", "ex_val_cols", "ex_val_nz", "ex_val_width")


def pack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ``ex_val`` [P, T] float16 replaced by its non-zeros (per row: their count, in
    ``ex_val_counts`` [P]; their columns and values, row by row) where that takes fewer bytes."""
    val = state.get("ex_val")
    if val is None or val.numel() == 0:
        return state
    nonzero = val.view(torch.int16) != 0  # by the bits: a -0.0 is kept as it is
    counts = nonzero.sum(1, dtype=torch.int32)
    if 4 * int(counts.sum()) + 4 * counts.numel() >= 2 * val.numel():
        return state
    rows, cols = nonzero.nonzero(as_tuple=True)  # row by row, columns ascending
    packed = {key: t for key, t in state.items() if key != "ex_val"}
    packed.update(ex_val_counts=counts, ex_val_cols=cols.to(torch.int16), ex_val_nz=val[rows, cols],
                  ex_val_width=torch.tensor(val.shape[1]))
    return packed


def unpack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state ``pack`` was given (a state stored unpacked comes back as it is)."""
    if "ex_val_counts" not in state:
        return state
    counts = state["ex_val_counts"].long()
    val = torch.zeros(counts.numel(), int(state["ex_val_width"]), dtype=torch.float16)
    rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    val[rows, state["ex_val_cols"].long()] = state["ex_val_nz"]
    out = {key: t for key, t in state.items() if key not in PACKED}
    out["ex_val"] = val
    return out
