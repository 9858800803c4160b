"""Exactly mergeable encodings: top-k keys that sort like (value, lower context) and fixed-point
sums that add up the same in any order."""

from __future__ import annotations

import torch

from workers.compute.values import MASK32

EMPTY_KEY = -1
# Sums are kept in fixed point (int64, 2^-16 steps) so that they add up the same in any order:
# shards merged in finalize give bit-identical means to a single pass.
FIXED_SCALE = 1 << 16


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fixed point (int64 multiples of 1 / FIXED_SCALE)."""
    return torch.round(x.double() * FIXED_SCALE).long()


def top_keys(values: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 keys: larger value first, then lower context (EMPTY_KEY if <= 0)."""
    bits = values.contiguous().view(torch.int32).long()  # positive float32 bits sort like the floats
    keys = (bits << 32) | (MASK32 - contexts)
    return torch.where(values > 0, keys, EMPTY_KEY)


def decode_top_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values float32, contexts int64) of keys; empty entries come back as (0, -1)."""
    empty = keys < 0
    values = (keys >> 32).to(torch.int32).view(torch.float32)
    contexts = MASK32 - (keys & MASK32)
    return values.masked_fill(empty, 0.0), contexts.masked_fill(empty, -1)
