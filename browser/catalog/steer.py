"""Steering: a prompt run with and without edits of units (ablate, clamp, scale, steer), computed by a
gpu-queue worker (``workers.tasks_steer.steer_prompt``) under the compute rules of
``browser/api/compute.py``. A request reads and writes as a query string (``steer_query``), so a
result is shared as the URL of the page that re-runs it.

A unit in a query string: ``model/source/index:op[:value][@pos,pos]``, e.g.
``smollm2-135m/blocks.3.mlp.hook_post/12:steer:8@5``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.http import Http404

from browser.api.compute import ComputeError, compute_call
from browser.catalog.models import Model, Unit
from browser.catalog.selectors import unit_by_id
from browser.examples.selectors import vocab_for
from workers.compute.ops import OPS

MAX_PROMPT_CHARS = 1000
MAX_UNITS = 8
MAX_N_TOKENS = 64
MAX_VALUE = 1000.0
"""Clamp values and steering coefficients beyond this are refused: activations of the models served
are below a few hundred, and a larger push only measures the model's saturation."""
MAX_SCALE = 100.0
MAX_TEMPERATURE = 2.0
MAX_POSITIONS = 64
TASK = "workers.tasks_steer.steer_prompt"


class SteerError(ValueError):
    """A request that cannot run, or no worker answered; the message says which."""


@dataclass(frozen=True)
class UnitEdit:
    unit: Unit
    op: str
    value: float
    positions: tuple[int, ...] = ()

    @property
    def uid(self) -> str:
        return f"{self.unit.source.model.name}/{self.unit.source.name}/{self.unit.index}"

    @property
    def spec(self) -> str:
        """The query-string form (the mean is re-read from the unit, so it is not written)."""
        value = "" if self.op in ("zero", "mean") else f":{self.value:g}"
        at = f"@{','.join(map(str, self.positions))}" if self.positions else ""
        return f"{self.uid}:{self.op}{value}{at}"


@dataclass(frozen=True)
class SteerRequest:
    prompt: str
    edits: tuple[UnitEdit, ...]
    n_tokens: int = 16
    temperature: float = 0.0
    seed: int = 0
    model: Model = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", self.edits[0].unit.source.model)

    def task_request(self) -> dict[str, Any]:
        """What the worker reads: unit primary keys and numbers only."""
        units = [{"unit_id": e.unit.pk, "op": e.op, "value": e.value, "positions": list(e.positions)}
                 for e in self.edits]
        return {"prompt": self.prompt, "units": units, "n_tokens": self.n_tokens, "temperature": self.temperature,
                "seed": self.seed}

    def query(self) -> str:
        pairs = [("prompt", self.prompt), *(("unit", e.spec) for e in self.edits), ("n", str(self.n_tokens)),
                 ("temperature", f"{self.temperature:g}"), ("seed", str(self.seed))]
        return urlencode(pairs)


def _number(raw: Any, name: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SteerError(f"{name} must be a number (got {raw!r})") from None
    if not math.isfinite(value):
        raise SteerError(f"{name} must be a finite number (got {raw!r})")
    return value


def _value(op: str, raw: Any, unit: Unit) -> float:
    if op == "zero":
        return 0.0
    if op == "mean":
        if unit.mean_activation is None:
            raise SteerError(f"unit {unit.source.name}/{unit.index} has no harvested mean to ablate to")
        return float(unit.mean_activation)
    if raw is None or raw == "":
        raise SteerError(f"{op} needs a value (the {'factor' if op == 'scale' else 'strength'})")
    value = _number(raw, f"the {op} value")
    limit = MAX_SCALE if op == "scale" else MAX_VALUE
    if abs(value) > limit:
        raise SteerError(f"the {op} value {value:g} is beyond ±{limit:g}: outside any sensible range")
    return value


def _positions(raw: Any) -> tuple[int, ...]:
    items = raw if isinstance(raw, list | tuple) else [p for p in str(raw or "").split(",") if p.strip()]
    try:
        positions = tuple(sorted({int(p) for p in items}))
    except (TypeError, ValueError):
        raise SteerError(f"positions must be whole numbers (got {raw!r})") from None
    if any(p < 0 for p in positions) or len(positions) > MAX_POSITIONS:
        raise SteerError(f"positions are token indices from 0 (at most {MAX_POSITIONS} of them)")
    return positions


def unit_edit(*, uid: str, op: str, value: Any = None, positions: Any = None) -> UnitEdit:
    if op not in OPS:
        raise SteerError(f"unknown intervention {op!r}; one of {', '.join(OPS)}")
    try:
        unit = unit_by_id(uid)
    except Http404:  # also a malformed id
        raise SteerError(f"unknown unit {uid!r} (give model/source/index)") from None
    return UnitEdit(unit, op, _value(op, value, unit), _positions(positions))


def parse_spec(spec: str) -> UnitEdit:
    """``model/source/index:op[:value][@positions]`` -> UnitEdit."""
    head, _, at = spec.partition("@")
    uid, _, rest = head.partition(":")
    op, _, value = rest.partition(":")
    return unit_edit(uid=uid.strip(), op=op.strip() or "steer", value=value.strip() or None, positions=at)


def steer_request(*, prompt: str, edits: list[UnitEdit], n_tokens: Any = 16, temperature: Any = 0.0,
                  seed: Any = 0) -> SteerRequest:
    """Check a request against the limits; every refusal says what to change."""
    prompt = prompt.strip()
    if not prompt:
        raise SteerError("Type a prompt first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SteerError(f"The prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}, please.")
    if not edits:
        raise SteerError("Name at least one unit to intervene on.")
    if len(edits) > MAX_UNITS:
        raise SteerError(f"{len(edits)} units; at most {MAX_UNITS} per request.")
    if len({e.uid for e in edits}) < len(edits):
        raise SteerError("A unit is named twice; give each unit one intervention.")
    if len({e.unit.source.model_id for e in edits}) > 1:
        raise SteerError("All units of one request must belong to one model.")
    model = edits[0].unit.source.model
    if model.kind != Model.Kind.CAUSAL_LM:
        raise SteerError(f"{model.name} ({model.get_kind_display()}) is not a causal language model: it predicts "
                         "no next token, so steering has nothing to show. Steer a unit of a causal LM (e.g. SmolLM2).")
    n = int(_number(n_tokens, "n_tokens"))
    t, s = _number(temperature, "temperature"), int(_number(seed, "seed"))
    if not 1 <= n <= MAX_N_TOKENS:
        raise SteerError(f"n_tokens must be 1 to {MAX_N_TOKENS}")
    if not 0 <= t <= MAX_TEMPERATURE:
        raise SteerError(f"temperature must be 0 (greedy) to {MAX_TEMPERATURE:g}")
    return SteerRequest(prompt, tuple(edits), n, t, s)


def steer_request_from_query(params: Mapping[str, Any], specs: list[str]) -> SteerRequest:
    """The page's (and the API's GET) query string: prompt, unit (repeated), n, temperature, seed."""
    return steer_request(prompt=str(params.get("prompt", "")), edits=[parse_spec(s) for s in specs if s.strip()],
                         n_tokens=params.get("n", 16), temperature=params.get("temperature", 0),
                         seed=params.get("seed", 0))


@dataclass(frozen=True)
class SteerResult:
    request: SteerRequest
    kl: float
    top_plain: list[tuple[str, float]]
    top_steered: list[tuple[str, float]]
    up: list[tuple[str, float, float]]
    down: list[tuple[str, float, float]]
    plain: str
    steered: str
    raw: dict[str, Any]


def steer_run(request: SteerRequest, *, wait_s: float | None = None) -> SteerResult:
    """Queue the request on the gpu queue and wait for it (the caller checked user and throttle)."""
    try:
        data = compute_call(TASK, [request.task_request()], wait_s=wait_s)
    except ComputeError as exc:
        raise SteerError(str(exc)) from None
    vocab = vocab_for(request.model)
    return SteerResult(
        request, float(data["kl"]), [(vocab.token(t), p) for t, p in data["top_plain"]],
        [(vocab.token(t), p) for t, p in data["top_steered"]], [(vocab.token(t), p, q) for t, p, q in data["up"]],
        [(vocab.token(t), p, q) for t, p, q in data["down"]], data["plain"]["text"], data["steered"]["text"], data)
