"""Hook points per architecture, and a forward pass that stops after the deepest hooked layer.

Hook names follow TransformerLens/SAELens: ``blocks.{i}.mlp.hook_post`` is the input of the
MLP's down projection (one value per neuron), ``blocks.{i}.hook_resid_post`` the residual stream
after block ``i``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HOOK_RE = re.compile(r"^blocks\.(\d+)\.(mlp\.hook_post|hook_resid_post)$")


class HookError(ValueError):
    """An unknown hook point or architecture; the message lists the valid ones."""


class _StopForward(Exception):
    pass


@dataclass(frozen=True)
class Architecture:
    """Where a transformers architecture keeps its parts. The accessors take ``Any``: submodules
    are found by attribute, which torch's typing cannot follow."""

    name: str
    causal: bool
    layers: Callable[[Any], Sequence[nn.Module]]
    # The module whose input is `mlp.hook_post` (the MLP's down projection).
    mlp_out: Callable[[Any], nn.Module]
    # [d_mlp, d_model]: the output direction of each neuron.
    neuron_directions: Callable[[Any], torch.Tensor]
    final_norm: Callable[[Any], nn.Module | None]
    unembed: Callable[[Any], torch.Tensor | None]
    n_layers_key: str = "num_hidden_layers"
    d_model_key: str = "hidden_size"
    d_mlp_key: str = "intermediate_size"


def _linear_out_dirs(linear: Any) -> torch.Tensor:
    return linear.weight.detach().T  # nn.Linear stores [out, in]: [d_model, d_mlp] -> [d_mlp, d_model]


_LLAMA = Architecture(
    name="llama",
    causal=True,
    layers=lambda m: m.model.layers,
    mlp_out=lambda layer: layer.mlp.down_proj,
    neuron_directions=lambda layer: _linear_out_dirs(layer.mlp.down_proj),
    final_norm=lambda m: m.model.norm,
    unembed=lambda m: m.lm_head.weight.detach(),
)
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bert": Architecture(
        name="bert",
        causal=False,
        layers=lambda m: m.encoder.layer,
        mlp_out=lambda layer: layer.output.dense,
        neuron_directions=lambda layer: _linear_out_dirs(layer.output.dense),
        final_norm=lambda m: None,
        unembed=lambda m: None,
    ),
    "gpt2": Architecture(
        name="gpt2",
        causal=True,
        layers=lambda m: m.transformer.h,
        mlp_out=lambda layer: layer.mlp.c_proj,
        # GPT-2's Conv1D stores [in, out]: already [d_mlp, d_model].
        neuron_directions=lambda layer: layer.mlp.c_proj.weight.detach(),
        final_norm=lambda m: m.transformer.ln_f,
        unembed=lambda m: m.lm_head.weight.detach(),
        n_layers_key="n_layer",
        d_model_key="n_embd",
        d_mlp_key="n_inner",
    ),
    "gpt_neox": Architecture(
        name="gpt_neox",
        causal=True,
        layers=lambda m: m.gpt_neox.layers,
        mlp_out=lambda layer: layer.mlp.dense_4h_to_h,
        neuron_directions=lambda layer: _linear_out_dirs(layer.mlp.dense_4h_to_h),
        final_norm=lambda m: m.gpt_neox.final_layer_norm,
        unembed=lambda m: m.embed_out.weight.detach(),
    ),
}


def architecture_for(model_type: str) -> Architecture:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise HookError(f"unsupported architecture {model_type!r}; supported: {supported}") from None


def dims(config: Any, arch: Architecture) -> tuple[int, int, int]:
    """(n_layers, d_model, d_mlp) from a transformers config."""
    n_layers = int(getattr(config, arch.n_layers_key))
    d_model = int(getattr(config, arch.d_model_key))
    d_mlp = getattr(config, arch.d_mlp_key, None) or 4 * d_model
    return n_layers, d_model, int(d_mlp)


def hook_points(n_layers: int) -> list[str]:
    return [f"blocks.{i}.{kind}" for i in range(n_layers) for kind in ("mlp.hook_post", "hook_resid_post")]


def parse_hook(name: str, n_layers: int) -> tuple[int, str]:
    """(layer, kind) of a hook name; a clear error listing valid names otherwise."""
    match = HOOK_RE.match(name)
    if not match or int(match.group(1)) >= n_layers:
        raise HookError(
            f"unknown hook point {name!r}; valid: blocks.{{i}}.mlp.hook_post and blocks.{{i}}.hook_resid_post "
            f"for i in 0..{n_layers - 1} (e.g. blocks.0.mlp.hook_post)"
        )
    return int(match.group(1)), match.group(2)


def expand_hooks(pattern: str, n_layers: int) -> list[str]:
    """Expand a comma-separated list of names or globs (``blocks.*.mlp.hook_post``)."""
    valid = hook_points(n_layers)
    chosen: list[str] = []
    for part in (p.strip() for p in pattern.split(",") if p.strip()):
        if "*" in part:
            regex = re.compile("^" + re.escape(part).replace(r"\*", r"\d+") + "$")
            matched = [name for name in valid if regex.match(name)]
            if not matched:
                parse_hook(part.replace("*", "x"), n_layers)
            chosen.extend(matched)
        else:
            parse_hook(part, n_layers)
            chosen.append(part)
    if not chosen:
        raise HookError("no hook points given")
    return sorted(set(chosen), key=lambda name: (parse_hook(name, n_layers)[0], name))


@contextmanager
def capture(
    model: nn.Module, arch: Architecture, names: Sequence[str], n_layers: int, sink: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Register hooks that hand each activation ``[B, T, D]`` to ``sink``; always removed.

    The hook of the deepest point raises to stop the forward pass there (see :func:`forward`).
    """
    parsed = [(name, *parse_hook(name, n_layers)) for name in names]
    deepest = max(parsed, key=lambda item: (item[1], item[2] == "hook_resid_post"))[0]
    layers = arch.layers(model)
    handles = []

    def make(name: str, from_input: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any = None) -> None:
            value = args[0] if from_input else (output[0] if isinstance(output, tuple) else output)
            sink(name, value)
            if name == deepest:
                raise _StopForward

        return hook

    try:
        for name, layer, kind in parsed:
            if kind == "mlp.hook_post":
                handles.append(arch.mlp_out(layers[layer]).register_forward_pre_hook(make(name, True)))
            else:
                handles.append(layers[layer].register_forward_hook(make(name, False)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Run the model until the deepest hook stops it (inference mode)."""
    with torch.inference_mode():
        try:
            trunk = getattr(model, "base_model", model)
            trunk(input_ids=input_ids, attention_mask=attention_mask)
        except _StopForward:
            pass
