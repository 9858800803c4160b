"""The harvest pass: one forward pass feeding every source's accumulator (which also keeps the
per-token values of the contexts that may become examples: there is no second pass)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from workers.compute.correlation import CorrelationAccumulator
from workers.compute.hooks import Architecture, capture, forward
from workers.compute.stats import Batch, NonFiniteActivation, UnitAccumulator

Encoder = Callable[[torch.Tensor], torch.Tensor]
TopEncoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SourceRuntime:
    """A source as the passes see it: where its activations come from and how to get units."""

    name: str
    hook: str
    n_units: int
    unit_offset: int
    encode: Encoder | None = None
    """Maps hook activations [..., d_in] to unit activations [..., n_units] (an SAE); None for neurons."""
    sparse: bool = False
    """The units are non-negative and mostly zero (SAE latents): statistics from the non-zeros."""
    encode_top: TopEncoder | None = None
    """A TopK SAE's codes as (indices, values) [..., k]: the sparse accumulator reads them instead
    of the dense codes (which are then never made, unless a correlation needs them)."""


@dataclass(frozen=True)
class CorrelationPair:
    """Correlation sums between a neuron source and an SAE source on the same hook, fed by the
    harvest pass from the very activations its accumulators see, over every ``stride``-th token
    of the corpus (a fixed subsample, like the histogram's)."""

    neurons: str
    features: str
    accumulator: CorrelationAccumulator
    stride: int

    def update(self, x: torch.Tensor, y: torch.Tensor, invalid: torch.Tensor, first_token: int) -> None:
        """x [B, T, n_x] neurons, y [B, T, n_y] latents, invalid [B, T], of the batch that starts at
        global token ``first_token``."""
        offset = (-first_token) % self.stride
        rows = slice(offset, None, self.stride)  # strided views: no copy
        self.accumulator.update_sparse(x.reshape(-1, x.shape[-1])[rows], y.reshape(-1, y.shape[-1])[rows],
                                       ~invalid.reshape(-1)[rows])


@dataclass(frozen=True)
class TokenBatch:
    ids: torch.Tensor
    """[B, L] token ids, padded to the corpus's context length."""
    attention_mask: torch.Tensor
    """[B, L] 1 on real tokens."""
    invalid: torch.Tensor
    """[B, L] True on padding and (when excluded) special tokens."""
    contexts: torch.Tensor
    """[B] global context indices, consecutive in the first pass."""


def make_batch(contexts: Sequence[int], token_lists: Sequence[Sequence[int]], length: int,
               special_ids: set[int], exclude_special: bool, pad_id: int) -> TokenBatch:
    ids = torch.full((len(contexts), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(contexts), length), dtype=torch.int64)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        mask[row, : len(tokens)] = 1
    invalid = mask == 0
    if exclude_special and special_ids:
        invalid |= torch.isin(ids, torch.tensor(sorted(special_ids), dtype=torch.int64))
    return TokenBatch(ids, mask, invalid, torch.tensor(list(contexts), dtype=torch.int64))


def _to(batch: TokenBatch, device: torch.device) -> TokenBatch:
    return TokenBatch(*(t.to(device, non_blocking=True) for t in (batch.ids, batch.attention_mask,
                                                                 batch.invalid, batch.contexts)))


def harvest_pass(model: nn.Module, arch: Architecture, n_layers: int, sources: Sequence[SourceRuntime],
                 accumulators: dict[str, UnitAccumulator], batches: Iterable[TokenBatch], context_length: int,
                 on_batch: Callable[[int], None] | None = None,
                 correlations: Sequence[CorrelationPair] = ()) -> None:
    """Feed every batch's activations to the accumulators (and correlation sums), inside the
    hooks (while still hot in cache); the forward pass stops after the deepest hook."""
    device = next(model.parameters()).device
    current: list[TokenBatch] = []
    dense_needed = {pair.features for pair in correlations}

    def sink(hook: str, acts: torch.Tensor) -> None:
        batch = current[0]
        first_token = int(batch.contexts[0]) * context_length
        values: dict[str, torch.Tensor] = {}
        for source in sources:
            if source.hook == hook:
                if source.encode_top is not None and source.name not in dense_needed:
                    update = Batch(None, batch.contexts, batch.invalid, first_token, top=source.encode_top(acts))
                else:
                    values[source.name] = source.encode(acts) if source.encode is not None else acts
                    update = Batch(values[source.name], batch.contexts, batch.invalid, first_token)
                try:
                    accumulators[source.name].update(update)
                except NonFiniteActivation as exc:
                    raise exc.at(hook=hook, source=source.name) from None
        for pair in correlations:
            if pair.neurons in values and pair.features in values:
                pair.update(values[pair.neurons], values[pair.features], batch.invalid, first_token)

    hooks = sorted({s.hook for s in sources})
    with capture(model, arch, hooks, n_layers, sink):
        for batch in batches:
            batch = _to(batch, device)
            current[:] = [batch]
            forward(model, batch.ids, batch.attention_mask)
            if on_batch is not None:
                on_batch(batch.ids.shape[0])
