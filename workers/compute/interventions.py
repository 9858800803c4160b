"""Interventions: change units during a forward pass (ablate, clamp, scale, steer), at the same
hook points as the harvest (``blocks.{i}.mlp.hook_post``, ``blocks.{i}.hook_resid_post`` and the
other kinds of ``hooks.KINDS``, each where ``hooks.splice`` reads and replaces it).

Every edit is written as a change of the hook's tensor ``x`` along one direction ``d``:
``x + (a' - a) d``. For a neuron (or a residual dimension) ``d`` is the basis vector, so the
other coordinates are untouched and, at ``mlp.hook_post``, the MLP's output moves by
``(a' - a)`` times the neuron's output direction (the down projection's column). For an SAE
feature ``a`` is the feature's activation on ``x`` and ``d`` its decoder row in the hook's scale:
the SAE's reconstruction error passes through untouched. Steering adds ``c d`` without reading
``a``. All edits of one hook are computed from the unedited ``x`` and summed.

A transcoder feature (an ``Edit`` whose ``sae`` is a transcoder, named by its hook
``blocks.{i}.mlp.hook_in``) lives on two tensors: ``a`` is the transcoder's encoding of the MLP's
input as the MLP really receives it (after every edit upstream, and after an edit of
``mlp.hook_in`` itself), and the edit adds ``(a' - a) W_dec[f]`` to the MLP's output (the down
projection's output, what the transcoder was trained to predict: ``hook_mlp_out``, before any
post-MLP norm). The real MLP output stays, so the transcoder's error (and its other features,
``b_dec`` and skip term) passes through untouched; steering adds ``c W_dec[f]`` there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from workers.compute import hooks
from workers.compute.ops import OPS
from workers.compute.sae.model import SparseAutoencoder


class InterventionError(ValueError):
    """An edit that cannot be applied (unknown op, index out of range, two edits of one unit)."""


@dataclass(frozen=True)
class Edit:
    """One unit's change. ``sae`` is None for a neuron (a coordinate of the hook's tensor)."""

    hook: str
    """Hook point, e.g. blocks.3.mlp.hook_post (a transcoder's: blocks.3.mlp.hook_in)."""
    index: int
    """Neuron or feature index."""
    op: str
    """One of OPS."""
    value: float = 0.0
    """Clamp value, mean, scale factor or steering coefficient (unused by zero)."""
    sae: SparseAutoencoder | None = None
    """The SAE or transcoder whose feature ``index`` is edited; None for a neuron."""
    positions: tuple[int, ...] | None = None
    """Absolute token positions (prompt and generated tokens counted from 0); None: every position."""

    @property
    def transcoder(self) -> bool:
        """A transcoder feature: read at the MLP's input, written to the MLP's output."""
        return self.sae is not None and bool(self.sae.cfg.transcoder)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise InterventionError(f"unknown intervention {self.op!r}; one of {', '.join(OPS)}")
        width = self.sae.cfg.d_sae if self.sae is not None else None
        if self.index < 0 or (width is not None and self.index >= width):
            raise InterventionError(f"unit index {self.index} out of range")
        if not math.isfinite(self.value):
            raise InterventionError(f"the value of an intervention must be finite (got {self.value})")
        if self.transcoder and not self.hook.endswith(".mlp.hook_in"):
            raise InterventionError(f"a transcoder reads an MLP's input: edit its feature at blocks.L.mlp.hook_in "
                                    f"(got {self.hook})")


@dataclass
class Intervention:
    """A set of edits, applied to the batch rows ``rows`` (None: every row).

    ``offset`` is the absolute position of the first token of the next forward call: a generation
    loop that feeds one token at a time with a KV cache sets it before each call.
    """

    edits: Sequence[Edit]
    rows: slice | None = None
    offset: int = 0
    by_hook: dict[str, list[Edit]] = field(init=False)
    """Edits of the hook's own tensor (neurons, SAE features)."""
    by_mlp: dict[str, list[Edit]] = field(init=False)
    """Transcoder features by their hook (an ``mlp.hook_in``): read there, written to the MLP's output."""
    _inputs: dict[str, torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[tuple[str, int, int]] = set()
        self.by_hook, self.by_mlp = {}, {}
        for edit in self.edits:
            key = (edit.hook, id(edit.sae), edit.index)
            if key in seen:
                raise InterventionError(f"unit {edit.index} at {edit.hook} is edited twice")
            seen.add(key)
            (self.by_mlp if edit.transcoder else self.by_hook).setdefault(edit.hook, []).append(edit)

    def apply(self, hook: str, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> the edited copy (x itself when nothing applies)."""
        rows = self.rows if self.rows is not None else slice(None)
        part = x[rows]  # [b, T, D]
        delta = torch.zeros_like(part)
        for edit in self.by_hook.get(hook, []):
            delta += _delta(edit, part) * _position_mask(edit, part.shape[1], self.offset, part)
        out = x.clone()
        out[rows] = part + delta
        return out

    def read_mlp_input(self, hook: str, x: torch.Tensor) -> torch.Tensor:
        """Keep the MLP's input [B, T, d_in] of this forward call for the transcoder edits of ``hook``."""
        self._inputs[hook] = x
        return x

    def apply_mlp_output(self, hook: str, out: torch.Tensor) -> torch.Tensor:
        """The MLP's output [B, T, d_out] plus ``(a' - a) W_dec[f]`` of each transcoder edit of ``hook``."""
        x = self._inputs.pop(hook, None)
        if x is None:
            raise InterventionError(f"the MLP's input at {hook} was not seen before its output")
        rows = self.rows if self.rows is not None else slice(None)
        part, inputs = out[rows], x[rows]
        delta = torch.zeros_like(part)
        for edit in self.by_mlp[hook]:
            delta += _transcoder_delta(edit, inputs, part) * _position_mask(edit, part.shape[1], self.offset, part)
        edited = out.clone()
        edited[rows] = part + delta
        return edited


def _position_mask(edit: Edit, length: int, offset: int, like: torch.Tensor) -> torch.Tensor:
    """[1, T, 1] of ones at the edit's positions within this call's window [offset, offset + T)."""
    if edit.positions is None:
        return torch.ones(1, length, 1, dtype=like.dtype, device=like.device)
    mask = torch.zeros(1, length, 1, dtype=like.dtype, device=like.device)
    for p in edit.positions:
        if offset <= p < offset + length:
            mask[0, p - offset, 0] = 1
    return mask


def _delta(edit: Edit, x: torch.Tensor) -> torch.Tensor:
    """(a' - a) d for every token of x [b, T, D]."""
    if edit.sae is None:
        if edit.index >= x.shape[-1]:
            raise InterventionError(f"neuron {edit.index} out of range for {edit.hook} (width {x.shape[-1]})")
        a = x[..., edit.index : edit.index + 1]  # [b, T, 1]
        direction = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
        direction[edit.index] = 1
        return (_target(edit, a) - a) * direction
    sae = edit.sae
    normalized, undo = sae.normalize(x.to(sae.W_dec.dtype))
    # The decoder row in the hook's scale: decode() divides by the normalization's per-token scale.
    direction = sae.W_dec[edit.index].detach() / (undo[0] if undo is not None else 1.0)  # [(b, T, ) D]
    if edit.op == "steer":
        return (edit.value * direction).to(x.dtype).expand_as(x)
    a = sae.activate(sae.pre_acts(normalized))[..., edit.index : edit.index + 1]  # [b, T, 1]
    return ((_target(edit, a) - a) * direction).to(x.dtype)


def _transcoder_delta(edit: Edit, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(a' - a) W_dec[f] for every token: ``a`` encoded from the MLP input x [b, T, d_in], added to
    the MLP output out [b, T, d_out]."""
    sae = edit.sae
    assert sae is not None
    if x.shape[-1] != sae.cfg.d_in or out.shape[-1] != sae.cfg.out_dim:
        raise InterventionError(f"the transcoder at {edit.hook} maps {sae.cfg.d_in} values to {sae.cfg.out_dim}, "
                                f"but this MLP reads {x.shape[-1]} and writes {out.shape[-1]}")
    direction = sae.W_dec[edit.index].detach()  # [d_out]
    if edit.op == "steer":
        return (edit.value * direction).to(out.dtype).expand_as(out)
    a = sae.encode(x.to(sae.W_enc.dtype))[..., edit.index : edit.index + 1]  # [b, T, 1]
    return ((_target(edit, a) - a) * direction).to(out.dtype)


def _target(edit: Edit, a: torch.Tensor) -> torch.Tensor:
    """a' for the activation a [b, T, 1]."""
    if edit.op == "zero":
        return torch.zeros_like(a)
    if edit.op in ("mean", "clamp"):
        return torch.full_like(a, edit.value)
    if edit.op == "scale":
        return a * edit.value
    return a + edit.value  # steer a neuron: its coordinate moves by c


@contextmanager
def applied(model: nn.Module, arch: hooks.Architecture, n_layers: int, intervention: Intervention) -> Iterator[None]:
    """Install the intervention's hooks (removed on exit, whatever happens).

    Edits of a hook's own tensor go where ``hooks.splice`` reads that hook. A transcoder's edits
    read the MLP's input with a pre-hook on the MLP module registered after any splice of
    ``mlp.hook_in`` (so they see the input as edited), and change the down projection's output."""
    layers = arch.layers(model)

    def out_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (intervention.apply_mlp_output(name, output[0]), *output[1:])
            return intervention.apply_mlp_output(name, output)

        return hook

    with ExitStack() as stack:
        for name in intervention.by_hook:
            hooks.parse_hook(name, n_layers)
            stack.enter_context(hooks.splice(model, arch, name, n_layers, partial(intervention.apply, name)))
        for name in intervention.by_mlp:
            layer, _ = hooks.parse_hook(name, n_layers)
            stack.enter_context(hooks.splice(model, arch, name, n_layers, partial(intervention.read_mlp_input, name)))
            handle = arch.mlp_out(layers[layer]).register_forward_hook(out_hook(name))
            stack.callback(handle.remove)
        try:
            yield
        finally:
            intervention._inputs.clear()
