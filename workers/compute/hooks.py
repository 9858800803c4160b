"""Hook points, and a forward pass that stops after the deepest hooked point.

Hook names follow TransformerLens/SAELens, per block ``i``: ``blocks.{i}.hook_resid_pre`` (the
block's input), ``hook_resid_mid`` (the residual stream between attention and MLP),
``mlp.hook_in`` (the MLP's input, after its pre-norm where it has one: what a transcoder reads),
``mlp.hook_post`` (the input of the MLP's down projection, one value per neuron) and
``hook_resid_post`` (the block's output). Where each lives in a model: ``architectures``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from workers.compute.architectures import ARCHITECTURES, Architecture, HookError, architecture_for, dims

__all__ = ["ARCHITECTURES", "KINDS", "Architecture", "HookError", "architecture_for", "capture", "dims",
           "expand_hooks", "forward", "hook_points", "parse_hook", "splice"]

# Hook kinds in the order a block computes them: the deepest hooked one stops the forward pass.
KINDS = ("hook_resid_pre", "hook_resid_mid", "mlp.hook_in", "mlp.hook_post", "hook_resid_post")
HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in KINDS) + r")$")


class _StopForward(Exception):
    pass


def hook_points(n_layers: int) -> list[str]:
    return [f"blocks.{i}.{kind}" for i in range(n_layers) for kind in KINDS]


def parse_hook(name: str, n_layers: int) -> tuple[int, str]:
    """(layer, kind) of a hook name; a clear error listing valid names otherwise."""
    match = HOOK_RE.match(name)
    if not match or int(match.group(1)) >= n_layers:
        kinds = ", ".join(f"blocks.{{i}}.{kind}" for kind in KINDS)
        raise HookError(f"unknown hook point {name!r}; valid: {kinds} for i in 0..{n_layers - 1} "
                        f"(e.g. blocks.0.mlp.hook_post)")
    return int(match.group(1)), match.group(2)


def _parallel(name: str) -> HookError:
    return HookError(f"{name} does not exist in this model: its blocks are parallel (attention and MLP "
                     f"both read hook_resid_pre, as in Pythia); hook hook_resid_pre or mlp.hook_in instead")


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
    # By layer, then by name (not depth): the order fixes each source's position in a run's config.
    return sorted(set(chosen), key=lambda name: (parse_hook(name, n_layers)[0], name))


def _depth(parsed: tuple[int, str]) -> tuple[int, int]:
    return parsed[0], KINDS.index(parsed[1])


def _site(arch: Architecture, block: nn.Module, name: str, kind: str) -> tuple[nn.Module, bool]:
    """(module, whether the activation is its input) where a hook kind is read in a block."""
    if kind == "hook_resid_post":
        return block, False
    if kind == "hook_resid_pre":
        return block, True
    if kind == "mlp.hook_post":
        return arch.mlp_out(block), True
    if kind == "mlp.hook_in":
        return arch.mlp(block), True
    module = arch.resid_mid(block)
    if module is None:
        raise _parallel(name)
    return module, True


def _input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))


def _output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _sites(model: nn.Module, arch: Architecture, names: Sequence[str], n_layers: int
           ) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, from_input) per hook, in the order the forward pass reaches them."""
    parsed = sorted(((name, parse_hook(name, n_layers)) for name in names), key=lambda item: _depth(item[1]))
    layers = arch.layers(model)
    return [(name, *_site(arch, layers[layer], name, kind)) for name, (layer, kind) in parsed]


@contextmanager
def capture(
    model: nn.Module, arch: Architecture, names: Sequence[str], n_layers: int, sink: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Register hooks that hand each activation ``[B, T, D]`` to ``sink``; always removed.

    The hook of the deepest point raises to stop the forward pass there (see :func:`forward`).
    """
    sites = _sites(model, arch, names, n_layers)
    deepest = sites[-1][0]
    handles = []

    def make(name: str, from_input: bool) -> Callable[..., None]:
        def pre_hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            sink(name, _input(args, kwargs))
            if name == deepest:
                raise _StopForward

        def post_hook(module: nn.Module, args: Any, output: Any) -> None:
            sink(name, _output(output))
            if name == deepest:
                raise _StopForward

        return pre_hook if from_input else post_hook

    try:
        for name, module, from_input in sites:
            if from_input:
                handles.append(module.register_forward_pre_hook(make(name, True), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(make(name, False)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def splice(model: nn.Module, arch: Architecture, hook: str, n_layers: int,
           replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at ``hook`` by ``replace(activation)`` for the whole forward pass."""
    [(_, module, from_input)] = _sites(model, arch, [hook], n_layers)

    def pre_hook(module: nn.Module, args: Any, kwargs: Any) -> Any:
        if args:
            return (replace(args[0]), *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        return args, {**kwargs, key: replace(kwargs[key])}

    def post_hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (replace(output[0]), *output[1:])
        return replace(output)

    handle = (module.register_forward_pre_hook(pre_hook, with_kwargs=True) if from_input
              else module.register_forward_hook(post_hook))
    try:
        yield
    finally:
        handle.remove()


def forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Run the model until the deepest hook stops it (inference mode)."""
    with torch.inference_mode():
        try:
            trunk = getattr(model, "base_model", model)
            trunk(input_ids=input_ids, attention_mask=attention_mask)
        except _StopForward:
            pass
