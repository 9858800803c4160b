"""Steering on a worker: a prompt run with and without a set of unit edits, side by side.

The request (already checked by the web side, ``browser/catalog/steer.py``, and checked again
here where the tokenizer is) names units by primary key. Both runs share one batch: row 0 plain,
row 1 with the edits, so the answer costs one generation of two rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from browser.catalog.models import Model, Source, Unit
from workers.compute.interventions import Edit, Intervention
from workers.compute.steering import Shift, cpu_threads, generate, shift
from workers.pipeline import loader

GENERATION_THREADS = 1
"""CPU threads while a request generates: each step is a matrix-vector product per layer, too small
to share. On the shared 2-core machine under load (load average 12), 8 SmolLM2 tokens took 1.9-3.0 s
with one thread and 40 s with two (their OpenMP workers wait for each other)."""
MAX_PROMPT_TOKENS = 256
"""A longer prompt is refused: one request must stay an interactive, bounded amount of work."""
TOP = 10


class SteerInputError(ValueError):
    """The request cannot be run (unknown unit, mixed or encoder models, prompt too long)."""


def unit_edits(units: list[Unit], specs: list[Mapping[str, Any]], device: str) -> list[Edit]:
    """One Edit per spec ({"unit_id", "op", "value", "positions"}), SAE and transcoder weights loaded by
    the loader (a transcoder feature's edit reads its source's mlp.hook_in and changes that MLP's output)."""
    edits = []
    for unit, spec in zip(units, specs, strict=True):
        source = unit.source
        sae = loader.source_sae(source, device) if source.kind in (Source.Kind.SAE, Source.Kind.TRANSCODER) else None
        positions = spec.get("positions")
        edits.append(Edit(source.hook_point, unit.index, str(spec["op"]), float(spec.get("value", 0.0)), sae=sae,
                          positions=tuple(int(p) for p in positions) if positions else None))
    return edits


def _units(specs: list[Mapping[str, Any]]) -> tuple[list[Unit], Model]:
    ids = [int(spec["unit_id"]) for spec in specs]
    found = Unit.objects.select_related("source", "source__model").in_bulk(ids)
    missing = [i for i in ids if i not in found]
    if not ids or missing:
        raise SteerInputError(f"unknown unit(s): {missing}" if missing else "name at least one unit")
    units = [found[i] for i in ids]
    models = {u.source.model for u in units}
    if len(models) > 1:
        raise SteerInputError("all units of one request must belong to one model")
    model = units[0].source.model
    if model.kind != Model.Kind.CAUSAL_LM:
        raise SteerInputError(f"{model.name} ({model.get_kind_display()}) is not a causal language model: "
                              "it predicts no next token, so there is nothing to steer")
    return units, model


def _shift_json(s: Shift) -> dict[str, Any]:
    return {"kl": s.kl, "top_plain": s.top_p, "top_steered": s.top_q, "up": s.up, "down": s.down}


def steer(*, request: Mapping[str, Any], device: str = "auto") -> dict[str, Any]:
    """{"prompt_ids", "kl", "top_plain", "top_steered", "up", "down", "plain": {"ids", "text"},
    "steered": {"ids", "text"}}: the next-token distributions and the N-token continuations."""
    units, model = _units(list(request["units"]))
    device = loader.device_for(device)
    torch_model, arch, tokenizer = loader.model_on(model, device)
    ids = tokenizer(str(request["prompt"]))["input_ids"]
    if not ids or len(ids) > MAX_PROMPT_TOKENS:
        raise SteerInputError(f"the prompt is {len(ids)} tokens; give 1 to {MAX_PROMPT_TOKENS}")
    edits = unit_edits(units, list(request["units"]), device)
    batch = torch.tensor([ids, ids], device=device)  # row 0 plain, row 1 steered
    with cpu_threads(GENERATION_THREADS if device == "cpu" else None):
        result = generate(torch_model, arch, model.n_layers, batch, int(request.get("n_tokens", 16)),
                          Intervention(edits, rows=slice(1, 2)), float(request.get("temperature", 0.0)),
                          int(request.get("seed", 0)))
    out = _shift_json(shift(result.first_logits[0], result.first_logits[1], TOP))
    out["prompt_ids"] = [int(t) for t in ids]
    for row, name in enumerate(("plain", "steered")):
        generated = result.tokens[row].tolist()
        out[name] = {"ids": generated, "text": tokenizer.decode(generated)}
    return out
