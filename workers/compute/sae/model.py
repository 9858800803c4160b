"""Sparse autoencoders and transcoders at inference: TopK, ReLU and JumpReLU, in the SAELens conventions.

``W_enc`` is [d_in, d_sae], ``W_dec`` [d_sae, d_in]. Encoding follows SAELens: normalize the
input (``normalize_activations``), subtract ``b_dec`` when ``apply_b_dec_to_input``, then
``pre = x @ W_enc + b_enc`` and the activation; decoding undoes the normalization.

A transcoder (``transcoder=True``) reads one place (a layer's ``mlp.hook_in``) and predicts another
(that MLP's output): ``W_dec`` is [d_sae, d_out], ``b_dec`` [d_out], and with a skip connection
``W_skip`` [d_out, d_in] adds ``x @ W_skip.T`` (SAELens's and circuit-tracer's convention). It never
subtracts ``b_dec`` from its input and does not normalize it.
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
    transcoder: bool = False
    """A transcoder: reads ``hook_name`` (an ``mlp.hook_in``) and predicts that MLP's output."""
    d_out: int = 0
    """Width of what a transcoder predicts (0: the same as d_in); SAEs leave it 0."""
    skip: bool = False
    """A transcoder with a linear skip term ``x @ W_skip.T``."""
    hook_name_out: str = ""
    """Where a transcoder's output goes, e.g. blocks.3.hook_mlp_out (SAELens's hook_name_out)."""

    @property
    def out_dim(self) -> int:
        """Width of the decoder's output: d_out for a transcoder, d_in for an SAE."""
        return (self.d_out or self.d_in) if self.transcoder else self.d_in

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
        if self.transcoder and (self.apply_b_dec_to_input or self.normalize_activations != "none"):
            raise ValueError("a transcoder reads its input as it is: apply_b_dec_to_input must be false and "
                             "normalize_activations none (its b_dec lives in the output space)")
        if not self.transcoder and (self.skip or self.d_out):
            raise ValueError("only a transcoder has a skip connection or a d_out")
        if self.d_out < 0:
            raise ValueError(f"d_out must be positive (got {self.d_out})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaeConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


def tensor_shapes(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    """The tensors of an SAE or transcoder in the SAELens layout, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,),
                                          "W_dec": (cfg.d_sae, cfg.out_dim), "b_dec": (cfg.out_dim,)}
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    if cfg.skip:
        shapes["W_skip"] = (cfg.out_dim, cfg.d_in)
    return shapes


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SaeConfig, tensors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._pre_buffer: torch.Tensor | None = None  # encode_top's products, reused between calls
        for name, shape in tensor_shapes(cfg).items():
            value = tensors[name].float() if tensors is not None else torch.zeros(shape)
            self.register_parameter(name, nn.Parameter(value.clone(), requires_grad=tensors is None))

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    threshold: nn.Parameter  # JumpReLU only
    W_skip: nn.Parameter  # transcoders with a skip connection only

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
        pre = x @ self.W_enc
        # Outside autograd the bias goes in place: one [..., d_sae] temporary fewer (the same floats).
        return pre + self.b_enc if pre.requires_grad else pre.add_(self.b_enc)

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
        pre = self.pre_acts(normalized)
        return self.activate(pre) if pre.requires_grad else self._activate_in_place(pre)

    def encode_top(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A TopK SAE's codes without the dense tensor: (indices int64, values) [..., k], the values
        as ``encode`` writes them (``encode`` is zero at every other latent)."""
        assert self.cfg.k is not None, "encode_top is for TopK SAEs"
        normalized, _ = self.normalize(x.to(self.W_enc.dtype))
        if torch.is_grad_enabled() and self.W_enc.requires_grad:
            pre = self.pre_acts(normalized)
        else:
            pre = self._pre_acts_reused(normalized)
        top = torch.topk(pre, self.cfg.k, dim=-1)
        return top.indices, torch.relu(top.values)

    def _pre_acts_reused(self, x: torch.Tensor) -> torch.Tensor:
        """``pre_acts`` (the same products) written into a buffer kept between calls: a harvest
        batch's [B*T, d_sae] is hundreds of MB, and a fresh one costs its page faults every batch
        (about a sixth of the encode on two CPU cores)."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        rows = x.reshape(-1, x.shape[-1])  # [..., d_in] -> [N, d_in], as matmul folds it
        n = rows.shape[0] * self.cfg.d_sae
        buffer = self._pre_buffer
        if buffer is None or buffer.numel() < n or buffer.device != rows.device or buffer.dtype != rows.dtype:
            with torch.inference_mode(False):  # a normal tensor: written in any mode
                buffer = self._pre_buffer = torch.empty(n, dtype=rows.dtype, device=rows.device)
        pre = torch.mm(rows, self.W_enc, out=buffer[:n].view(rows.shape[0], self.cfg.d_sae)).add_(self.b_enc)
        return pre.view(*x.shape[:-1], self.cfg.d_sae)

    def _activate_in_place(self, pre: torch.Tensor) -> torch.Tensor:
        """``activate`` written over ``pre`` (a temporary of encode's own): on a harvest batch the
        dense latents are hundreds of MB, and a fresh buffer costs its page faults every batch."""
        arch = self.cfg.architecture
        if arch == "relu":
            return pre.relu_()
        if arch == "jumprelu":
            keep = pre > self.threshold
            return pre.relu_().mul_(keep)
        assert self.cfg.k is not None
        top = torch.topk(pre, self.cfg.k, dim=-1)
        return pre.zero_().scatter_(-1, top.indices, torch.relu(top.values))

    def decode(self, f: torch.Tensor, undo: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        out = f @ self.W_dec + self.b_dec
        if undo is not None:
            scale, shift = undo
            out = out / scale + shift
        return out

    def skip_out(self, x: torch.Tensor) -> torch.Tensor:
        """A transcoder's skip term ``x @ W_skip.T`` [..., d_out] (zero without a skip connection)."""
        if not self.cfg.skip:
            return x.new_zeros((*x.shape[:-1], self.cfg.out_dim))
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` in its own scale; a transcoder's prediction of its output."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.transcoder:
            return self.decode(self.encode(x)) + self.skip_out(x)
        normalized, undo = self.normalize(x)
        return self.decode(self.activate(self.pre_acts(normalized)), undo)
