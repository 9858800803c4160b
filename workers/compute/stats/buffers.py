"""What the accumulators share within a process: the compiled CPU pass and reused scratch buffers."""

from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch

log = logging.getLogger(__name__)


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled CPU pass (imports numba: only in processes that harvest on the CPU), or None
    where numba can't be imported (missing, or refusing a NumPy newer than it supports): torch's
    passes run then."""
    try:
        from workers.compute import kernels
    except ImportError as exc:
        log.warning("numba is unavailable (%s): CPU statistics fall back to torch's passes", exc)
        return None
    return kernels


SCRATCH: dict[torch.device, torch.Tensor] = {}
VALUES: dict[torch.device, torch.Tensor] = {}  # the compiled pass's admitted values


def scratch(numel: int, device: torch.device, buffers: dict[torch.device, torch.Tensor] = SCRATCH) -> torch.Tensor:
    """A float32 buffer of at least ``numel`` elements, shared by every accumulator on the device
    (they run one after another), grown as needed and never freed."""
    buffer = buffers.get(device)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in any mode
            buffer = buffers[device] = torch.empty(numel, device=device)
    return buffer[:numel]
