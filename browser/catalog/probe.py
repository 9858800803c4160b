"""Try your own text: a unit's per-token activations on text a user types, computed by a gpu-queue
worker (the web side never loads a model) and awaited a few seconds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.utils.safestring import SafeString

from browser.api.compute import ComputeError, compute_call
from browser.catalog.models import Source, Unit
from browser.examples.selectors import Vocab, render_tokens, vocab_for

MAX_CHARS = 2000


class ProbeError(ValueError):
    """The text cannot be probed, or no worker answered in time; the message says which."""


@dataclass(frozen=True)
class ProbeResult:
    tokens: list[str]
    token_ids: list[int]
    values: list[float]
    max_pos: int
    max_value: float
    html: SafeString


def _result(unit: Unit, vocab: Vocab, data: dict[str, list[float] | list[int] | int]) -> ProbeResult:
    ids = [int(t) for t in data["token_ids"]]  # type: ignore[union-attr]
    values = np.asarray(data["values"], dtype=np.float32)
    max_pos = int(values.argmax()) if values.size else 0
    scale = max(unit.max_activation or 0.0, float(values.max()) if values.size else 0.0) or 1.0
    return ProbeResult([vocab.token(t) for t in ids], ids, [round(float(v), 4) for v in values], max_pos,
                       float(values.max()) if values.size else 0.0, render_tokens(ids, values, max_pos, vocab, scale))


def probe_unit(*, unit: Unit, text: str, wait_s: float | None = None) -> ProbeResult:
    """Queue the unit's activations on ``text`` on the gpu queue and wait for them (the compute
    rules of browser/api/compute.py: the caller has checked the user and the throttle)."""
    text = text.strip()
    if not text:
        raise ProbeError("Type some text first.")
    if len(text) > MAX_CHARS:
        raise ProbeError(f"At most {MAX_CHARS} characters, please.")
    if unit.source.kind == Source.Kind.SAE and not hasattr(unit.source, "sae"):
        raise ProbeError("This SAE source has no stored weights to encode with.")
    try:
        data = compute_call("workers.tasks.probe_unit", [unit.pk, text], wait_s=wait_s)
    except ComputeError as exc:
        raise ProbeError(str(exc)) from None
    return _result(unit, vocab_for(unit.source.model), data)
