"""Generation under an intervention, and how a next-token distribution moved (pure torch).

A steering request runs the prompt twice in one batch, row 0 plain and row 1 with the edits, so
both continuations share every forward call (and, when sampled, the same noise: Gumbel-max with
one seeded draw per step for both rows, so they differ only where the intervention moves the
distribution).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.compute import hooks
from workers.compute.interventions import Intervention, applied


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: unchanged), then restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Generated:
    first_logits: torch.Tensor
    """[B, vocab] float32: the next-token logits after the prompt."""
    tokens: torch.Tensor
    """[B, n_tokens] the generated token ids."""


def _keep_last(model: nn.Module) -> dict[str, Any]:
    # Only the last position's logits are needed: [B, T, vocab] of a 49k vocabulary is most of the memory.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _cache_key(model: nn.Module) -> str:
    """transformers 5 names the KV cache ``cache``; older releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """[B, vocab] -> [B]: greedy at temperature 0, else Gumbel-max with noise shared by the rows."""
    if temperature <= 0:
        return logits.argmax(-1)
    uniform = torch.rand(logits.shape[-1], generator=generator, device="cpu").clamp_(1e-20, 1.0)
    gumbel = -torch.log(-torch.log(uniform)).to(logits.device)
    return (logits / temperature + gumbel).argmax(-1)


def generate(model: nn.Module, arch: hooks.Architecture, n_layers: int, input_ids: torch.Tensor, n_tokens: int,
             intervention: Intervention | None = None, temperature: float = 0.0, seed: int = 0) -> Generated:
    """Feed ``input_ids`` [B, T], then ``n_tokens`` tokens one at a time with a KV cache, the
    intervention's hooks installed throughout (its ``offset`` follows the position)."""
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    keep, key = _keep_last(model), _cache_key(model)
    out: list[torch.Tensor] = []
    context = applied(model, arch, n_layers, intervention) if intervention is not None else nullcontext()
    with torch.inference_mode(), context:
        if intervention is not None:
            intervention.offset = 0
        result = model(input_ids=input_ids, use_cache=True, **keep)
        first = result.logits[:, -1].float()
        logits, past = first, getattr(result, key)
        for step in range(n_tokens):
            token = _pick(logits, temperature, generator)
            out.append(token)
            if step == n_tokens - 1:
                break
            if intervention is not None:
                intervention.offset = input_ids.shape[1] + step
            result = model(input_ids=token[:, None], use_cache=True, **{key: past}, **keep)
            logits, past = result.logits[:, -1].float(), getattr(result, key)
    tokens = torch.stack(out, 1) if out else torch.zeros(input_ids.shape[0], 0, dtype=torch.long)
    return Generated(first, tokens)


@dataclass(frozen=True)
class Shift:
    """How the next-token distribution moved from ``p`` (plain) to ``q`` (intervened)."""

    kl: float
    """KL(p || q) in nats."""
    top_p: list[tuple[int, float]]
    """The plain distribution's most likely tokens: (id, probability)."""
    top_q: list[tuple[int, float]]
    up: list[tuple[int, float, float]]
    """Tokens whose probability rose most: (id, p, q)."""
    down: list[tuple[int, float, float]]


def shift(plain: torch.Tensor, steered: torch.Tensor, top: int = 10) -> Shift:
    """Compare two next-token logit vectors [vocab]."""
    log_p, log_q = torch.log_softmax(plain.double(), -1), torch.log_softmax(steered.double(), -1)
    p, q = log_p.exp(), log_q.exp()
    kl = float((p * (log_p - log_q)).sum())
    change = q - p
    k = min(top, plain.shape[-1])

    def rows(ids: torch.Tensor) -> list[tuple[int, float, float]]:
        return [(int(i), float(p[i]), float(q[i])) for i in ids]

    return Shift(max(kl, 0.0), [(int(i), float(p[i])) for i in torch.topk(p, k).indices],
                 [(int(i), float(q[i])) for i in torch.topk(q, k).indices],
                 rows(torch.topk(change, k).indices), rows(torch.topk(-change, k).indices))
