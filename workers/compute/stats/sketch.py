"""The bottom-s sketch behind interval and random examples, as plain tensors.

Slot ``unit x N_OCTAVES + octave`` holds the ``s`` lowest hash priorities (with their contexts and
values) seen for that unit in that octave of context maxima; empty places hold EMPTY_PRIORITY.
"""

from __future__ import annotations

import torch

from workers.compute.values import EMPTY_PRIORITY, rank_in_group

Sketch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(priorities int64, contexts int64, values float32), each [slots, s]."""


def insert(sketch: Sketch, slot: torch.Tensor, pri: torch.Tensor, ctx: torch.Tensor, val: torch.Tensor) -> None:
    """Insert candidates in place (in ascending context order, after every held context)."""
    sk_pri, sk_ctx, sk_val = sketch
    s = sk_pri.shape[1]
    touched = torch.zeros(sk_pri.shape[0], dtype=torch.bool, device=slot.device)
    touched[slot] = True
    rows = touched.nonzero().squeeze(1)  # ascending, without sorting the candidates first
    # One stable sort of (slot, priority) over the held entries of the touched slots, then
    # the candidates: on (rare) priority ties the lower context, held ones first, wins.
    all_slot = torch.cat([rows.repeat_interleave(s), slot])
    all_pri = torch.cat([sk_pri[rows].reshape(-1), pri])
    sorted_key, order = torch.sort(all_slot * (1 << 32) + all_pri, stable=True)
    sorted_slot = sorted_key >> 32
    rank = rank_in_group(sorted_slot)
    keep = rank < s
    picked, target_slot, target_rank = order[keep], sorted_slot[keep], rank[keep]
    # Gather every source value before writing: held rows are read and written here.
    new_pri = all_pri[picked]
    new_ctx = torch.cat([sk_ctx[rows].reshape(-1), ctx])[picked]
    new_val = torch.cat([sk_val[rows].reshape(-1), val])[picked]
    sk_pri[target_slot, target_rank] = new_pri
    sk_ctx[target_slot, target_rank] = new_ctx
    sk_val[target_slot, target_rank] = new_val


def merge(a: Sketch, b: Sketch, samples: int) -> Sketch:
    """The exact sketch of two sketches' union (any context order): per slot the ``samples``
    lowest priorities, ties to the lower context."""
    pri, sctx, sval = (torch.cat([x, y], 1) for x, y in zip(a, b, strict=True))
    order = torch.sort(torch.where(sctx < 0, torch.iinfo(torch.int64).max, sctx), dim=1, stable=True).indices
    pri, sctx, sval = pri.gather(1, order), sctx.gather(1, order), sval.gather(1, order)
    order = torch.sort(pri, dim=1, stable=True).indices[:, :samples]
    return pri.gather(1, order), sctx.gather(1, order), sval.gather(1, order)


def dense(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sketch arrays of a state (stored sparsely: only its used rows) at full size."""
    slots, samples = state["sk_shape"].tolist()
    rows = state["sk_rows"]
    out = {
        "sk_pri": torch.full((slots, samples), EMPTY_PRIORITY, dtype=torch.int64),
        "sk_ctx": torch.full((slots, samples), -1, dtype=torch.int64),
        "sk_val": torch.zeros((slots, samples)),
    }
    for name, tensor in out.items():
        tensor[rows] = state[name]
    return out
