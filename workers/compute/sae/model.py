"""Sparse autoencoders at inference: TopK, ReLU and JumpReLU, in the SAELens conventions.

``W_enc`` is [d_in, d_sae], ``W_dec`` [d_sae, d_in]. Encoding follows SAELens: normalize the
input (``normalize_activations``), subtract ``b_dec`` when ``apply_b_dec_to_input``, then
``pre = x @ W_enc + b_enc`` and the activation; decoding undoes the normalization.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("topk", "relu", "jumprelu")
# "expected_average_only_in" scales by a constant during training only; the constant is folded
# into the weights before saving, so at inference it is the identity (as in SAELens).
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class SaeConfig:
    """What an SAE needs at inference, besides its tensors."""

    architecture: str
    """topk, relu or jumprelu."""
    d_in: int
    """Width of the hook activations it reads."""
    d_sae: int
    """Number of latents (features)."""
    k: int | None = None
    """Active latents per token (topk only)."""
    apply_b_dec_to_input: bool = True
    """Subtract the decoder bias from the input before encoding."""
    normalize_activations: str = "none"
    """none, expected_average_only_in, constant_norm_rescale or layer_norm (SAELens)."""
    hook_name: str = ""
    """The hook point it was trained on, e.g. blocks.3.mlp.hook_post."""
    model_name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}; supported: {', '.join(ARCHITECTURES)}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize_activations {self.normalize_activations!r}; "
                             f"supported: {', '.join(NORMALIZATIONS)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive (got {self.d_in}, {self.d_sae})")
        if self.architecture == "topk" and not (self.k and 1 <= self.k <= self.d_sae):
            raise ValueError(f"a TopK SAE needs 1 <= k <= d_sae (got k={self.k}, d_sae={self.d_sae})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaeConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def tensor_shapes(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of an SAE in the SAELens layout, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,),
                                          "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SaeConfig, tensors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        for name, shape in tensor_shapes(cfg).items():
            value = tensors[name].float() if tensors is not None else torch.zeros(shape)
            self.register_parameter(name, nn.Parameter(value.clone(), requires_grad=tensors is None))

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    threshold: nn.Parameter  # JumpReLU only

    def tensors(self) -> dict[str, torch.Tensor]:
        """The SAELens tensors (detached, on the CPU, float32)."""
        return {name: getattr(self, name).detach().float().cpu().contiguous() for name in tensor_shapes(self.cfg)}

    def with_config(self, **changes: Any) -> SparseAutoencoder:
        return SparseAutoencoder(replace(self.cfg, **changes), self.tensors())

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The input as the encoder sees it, and what decode needs to undo that (scale, shift)."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            scale = (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return x * scale, (scale, torch.zeros_like(scale))
        if mode == "layer_norm":
            # As SAELens: the unbiased std, eps added to it (not to the variance); decoding
            # multiplies back by the std alone.
            mu = x.mean(-1, keepdim=True)
            centred = x - mu
            std = centred.std(-1, keepdim=True)
            return centred / (std + LAYER_NORM_EPS), (1 / std, mu)
        return x, None

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] (already normalized) -> [..., d_sae] before the activation function."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        assert self.cfg.k is not None
        top = torch.topk(pre, self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Hook activations [..., d_in] -> feature activations [..., d_sae]."""
        x = x.to(self.W_enc.dtype)
        normalized, _ = self.normalize(x)
        return self.activate(self.pre_acts(normalized))

    def decode(self, f: torch.Tensor, undo: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        out = f @ self.W_dec + self.b_dec
        if undo is not None:
            scale, shift = undo
            out = out / scale + shift
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` in its own scale."""
        x = x.to(self.W_enc.dtype)
        normalized, undo = self.normalize(x)
        return self.decode(self.activate(self.pre_acts(normalized)), undo)
