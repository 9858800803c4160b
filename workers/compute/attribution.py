"""Attribution graphs in the MLP-neuron basis on the local replacement model (pure torch).

Nodes: neurons ``(layer, position, index)`` (their activation ``act(gate) * up``, the input of the
down projection), one "rest" node per (layer, position) standing for the neurons not selected there
(counted as error nodes by the scores), token embeddings and target logits. Edge ``s -> t`` = the
source's activation times the gradient of the target's value with respect to it on the frozen model
along direct paths (residual stream and frozen attention, entering no MLP in between). Because the
frozen model is linear, a target's incoming edges plus its bias term sum to its value exactly.

Which neurons get nodes: the ``max_units`` with the largest total attribution to the target logits
(activation x gradient through the whole frozen model, later neurons included, the node attribution
Transluce uses for neuron circuits), weighted by each logit's probability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.compute import replacement
from workers.compute.attribution_rows import total_gradients, transposed_rows
from workers.compute.graph_basis import LayerBasis, layer_bases, unit_values
from workers.compute.graph_config import GraphConfig
from workers.compute.graph_scores import Layout

__all__ = ["AttributionGraph", "GraphConfig", "build_graph"]

Report = Callable[[int, int, str], None]


@dataclass
class AttributionGraph:
    """The full (unpruned) graph of one prompt; nodes in ``layout`` order."""

    tokens: list[int]
    layout: Layout
    units: torch.Tensor  # [U, 3] long: layer, position, index
    values: torch.Tensor  # [n]: unit activations, logit values (0 for errors and tokens)
    adjacency: torch.Tensor  # [n, n]: A[target, source] direct effect
    bias: torch.Tensor  # [n]: what the biases alone give each node
    logit_tokens: torch.Tensor  # [k]
    logit_probs: torch.Tensor  # [k]
    selected_share: float  # share of the total attribution carried by the selected units
    timings: dict[str, float] = field(default_factory=dict)


def pick_targets(logits: torch.Tensor, config: GraphConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, probabilities) of the target logits from the last position's logits [vocab]."""
    probs = logits.float().softmax(-1)
    if config.target_tokens:
        tokens = torch.tensor(config.target_tokens, dtype=torch.long, device=probs.device)
        if int(tokens.min()) < 0 or int(tokens.max()) >= len(probs):
            raise ValueError(f"target tokens must be ids below the vocabulary size {len(probs)}")
        return tokens, probs[tokens]
    top = probs.topk(min(config.max_logits, len(probs)))
    cumulative = torch.cumsum(top.values, 0)
    count = int(torch.searchsorted(cumulative, cumulative.new_tensor(config.logit_probability))) + 1
    count = min(count, len(top.values))
    return top.indices[:count], top.values[:count]


def select_units(model: Any, frozen: replacement.Frozen, bases: list[LayerBasis], tokens: torch.Tensor,
                 probs: torch.Tensor, max_units: int) -> tuple[torch.Tensor, float]:
    """([U, 3] layer, position, index of the units with the largest total attribution, share they carry)."""
    # Logit j's gradients at each layer's MLP output, through the whole frozen model, in row j.
    grads = total_gradients(model, frozen, tokens)
    # [k, T, n] per layer: activation x gradient at the unit (the leaf's gradient along its direction)
    attribution = [(g @ basis.directions.T) * basis.acts[None] for g, basis in zip(grads, bases, strict=True)]
    totals = torch.stack([a.abs().flatten(1).sum(1) for a in attribution]).sum(0).clamp(min=1e-10)  # [k]
    scores = [((a.abs() / totals[:, None, None]) * probs[:, None, None]).sum(0).flatten() for a in attribution]
    flat = torch.cat(scores)
    top = flat.topk(min(max_units, int((flat > 0).sum())))
    ends = torch.cumsum(torch.tensor([len(s) for s in scores], device=flat.device), 0)
    layer = torch.searchsorted(ends, top.indices, right=True)
    within = top.indices - torch.cat([ends.new_zeros(1), ends])[layer]
    widths = torch.tensor([b.acts.shape[1] for b in bases], device=flat.device)[layer]
    units = torch.stack([layer, within // widths, within % widths], 1)
    return units, float(top.values.sum() / flat.sum().clamp(min=1e-10))


def _target_values(model: Any, run: replacement.Linear, bases: list[LayerBasis], units: torch.Tensor,
                   tokens: torch.Tensor, targets: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
    """[m]: the values of the nodes ``targets`` (indices into the selected units, then the target
    logits) on the frozen model, target j read from copy ``copies[j]`` of the run."""
    is_unit = targets < len(units)
    where = torch.arange(len(targets), device=targets.device)
    values = run.final.new_zeros(len(targets))
    if bool(is_unit.any()):
        values = values.index_put((where[is_unit],), unit_values(bases, run.computed, units[targets[is_unit]],
                                                                 run.mlp_in, copies[is_unit]))
    if not bool(is_unit.all()):
        finals = run.final[copies[~is_unit], -1]  # [m, d_model]
        logits = replacement.logits_at(model, finals, tokens[targets[~is_unit] - len(units)]).diagonal()
        values = values.index_put((where[~is_unit],), logits)
    return values


def direct_adjacency(model: Any, frozen: replacement.Frozen, bases: list[LayerBasis], units: torch.Tensor,
                     tokens: torch.Tensor, batch_size: int, report: Report | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(adjacency [n, n], values [n]) of the direct effects between the nodes: the targets' rows by
    the transposed frozen model (``attribution_rows``), ``batch_size`` targets at a time, and their
    values from one frozen forward pass."""
    n_layers, n_pos = len(frozen.acts), frozen.embeds.shape[0]
    layout = Layout(units=len(units), errors=n_layers * n_pos, tokens=n_pos, logits=len(tokens))
    rows = transposed_rows(model, frozen, bases, units, tokens, batch_size, report)
    with torch.no_grad():
        run = replacement.frozen_run(model, frozen, 1, total=False, neurons=[not basis.transcoder for basis in bases])
        every = torch.arange(len(units) + len(tokens), device=units.device)
        values = _target_values(model, run, bases, units, tokens, every, torch.zeros_like(every))
    adjacency = torch.zeros(layout.size, layout.size)
    target_index = torch.cat([torch.arange(layout.units), torch.arange(layout.size - layout.logits, layout.size)])
    adjacency[target_index] = rows.cpu()
    all_values = torch.zeros(layout.size)
    all_values[target_index] = values.cpu()
    return adjacency, all_values


def bias_terms(model: Any, frozen: replacement.Frozen, bases: list[LayerBasis], units: torch.Tensor,
               tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[n]: each target's value with every embedding and neuron set to zero (the biases' share)."""
    with torch.no_grad():
        run = replacement.frozen_run(model, frozen, 1, total=False, zero=True,
                                     neurons=[not basis.transcoder for basis in bases])
        every = torch.arange(len(units) + len(tokens), device=units.device)
        targets = _target_values(model, run, bases, units, tokens, every, torch.zeros_like(every))
    bias = torch.zeros(layout.size)
    bias[: layout.units] = targets[: layout.units].cpu()
    bias[layout.size - layout.logits:] = targets[layout.units:].cpu()
    return bias


def _check_dictionaries(config: GraphConfig, saes: dict[int, Any] | None) -> None:
    if config.basis == "neurons":
        return
    where = "an SAE on the mlp.hook_post" if config.basis == "sae" else "a transcoder on the mlp.hook_in"
    if not saes:
        raise ValueError(f"basis {config.basis} needs {where} of at least one layer")
    wrong = sorted(layer for layer, sae in saes.items() if bool(sae.cfg.transcoder) != (config.basis == "transcoder"))
    if wrong:
        raise ValueError(f"basis {config.basis} needs {where} of each layer; layer {wrong[0]} has "
                         f"{'a transcoder' if config.basis == 'sae' else 'an SAE'}")


def build_graph(model: Any, ids: torch.Tensor, config: GraphConfig, report: Report | None = None,
                saes: dict[int, Any] | None = None) -> AttributionGraph:
    """The full attribution graph of the prompt ``ids`` [T] for the model's next token; with basis
    ``sae``, ``saes`` maps layers to the SparseAutoencoder on their ``mlp.hook_post``, with basis
    ``transcoder`` to the transcoder on their ``mlp.hook_in``."""
    import time

    config.validate()
    _check_dictionaries(config, saes)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    started = time.perf_counter()
    frozen = replacement.clean_run(model, ids)
    last = replacement.logits_at(model, frozen.final[-1], torch.arange(replacement.unembed(model).shape[0], device=ids.device))
    tokens, probs = pick_targets(last, config)
    bases = layer_bases(model, frozen, saes if config.basis != "neurons" and saes else {})
    units, share = select_units(model, frozen, bases, tokens, probs, config.max_units)
    selected = time.perf_counter()
    adjacency, values = direct_adjacency(model, frozen, bases, units, tokens, config.batch_size, report)
    n_layers, n_pos = len(frozen.acts), len(ids)
    layout = Layout(units=len(units), errors=n_layers * n_pos, tokens=n_pos, logits=len(tokens))
    bias = bias_terms(model, frozen, bases, units, tokens, layout)
    timings = {"select_s": selected - started, "edges_s": time.perf_counter() - selected}
    return AttributionGraph(tokens=[int(t) for t in ids], layout=layout, units=units.cpu(), values=values,
                            adjacency=adjacency, bias=bias, logit_tokens=tokens.cpu(), logit_probs=probs.cpu(),
                            selected_share=share, timings=timings)
