"""Training SAEs on a stream of activations: TopK (with AuxK, Gao et al. 2024), ReLU + L1, and
BatchTopK, JumpReLU and Matryoshka BatchTopK (``sparsity.py``); the last three are saved as
JumpReLU SAEs (a per-latent threshold), as SAELens saves them.

Activations arrive in chunks ``[n, d_in]``; a shuffle buffer mixes tokens from many contexts
before they form a batch. Inputs are scaled so their mean norm is sqrt(d_in)
(``expected_average_only_in``); the scale is folded into the weights at the end, so the
returned SAE reads raw activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from workers.compute.sae import sparsity
from workers.compute.sae.model import SaeConfig, SparseAutoencoder

# Gao et al.: AuxK uses the top d_in/2 dead latents, weighted 1/32.
AUXK_COEF = 1 / 32
LOSS_EVERY = 10
ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu", "matryoshka")
TOPK_LIKE = ("topk", "batchtopk", "matryoshka")


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "topk"
    """topk, batchtopk or matryoshka (k per token, with the AuxK loss), relu (L1 penalty) or
    jumprelu (L0 penalty)."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Active latents per token (topk; the batch's mean for batchtopk and matryoshka)."""
    l1_coefficient: float = 5.0
    """Weight of the L1 penalty on latent activations times decoder norms (relu)."""
    l0_coefficient: float = 0.01
    """Weight of the L0 penalty (jumprelu), against the per-dimension squared error."""
    jumprelu_bandwidth: float = 0.1
    """Width of the straight-through kernel (jumprelu), in the scaled input's units (mean norm
    sqrt(d_in), so pre-activations are of order 1; SAELens's 0.001 moved thresholds too slowly here)."""
    jumprelu_init_threshold: float = 0.5
    """Initial threshold of every latent (jumprelu), in the same units."""
    matryoshka_prefixes: tuple[int, ...] = ()
    """Nested prefix sizes (matryoshka); empty: d/16, d/8, d/4, d/2, d."""
    steps: int = 2000
    """Optimizer steps."""
    batch_tokens: int = 1024
    """Tokens per step."""
    lr: float | None = None
    """Adam learning rate; None: 2e-4 / sqrt(d_sae / 16384) (Gao et al.'s scaling)."""
    buffer_tokens: int = 16384
    """Tokens in the shuffle buffer; half of it is replaced at each refill."""
    reuse: int = 1
    """How many times each buffer fill is used (reshuffled) before new activations are read."""
    dead_after_tokens: int = 200_000
    """A latent that has not fired for this many tokens counts as dead (fed to AuxK)."""
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"training supports {', '.join(ARCHITECTURES)} SAEs (got {self.architecture!r})")
        if self.d_sae < 1 or self.steps < 1 or self.batch_tokens < 1 or self.reuse < 1:
            raise ValueError("width, steps, batch size and reuse must be positive")
        if self.architecture in TOPK_LIKE and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be between 1 and the width {self.d_sae} (got {self.k})")
        if self.buffer_tokens < 2 * self.batch_tokens:
            raise ValueError("the shuffle buffer must hold at least two batches")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold < 0 or self.l0_coefficient < 0:
            raise ValueError("the JumpReLU bandwidth must be positive, its threshold and L0 coefficient >= 0")
        if self.architecture == "matryoshka":
            sparsity.matryoshka_prefixes(self.d_sae, self.matryoshka_prefixes)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 16384)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SMALL_SAE = 1 << 22
"""Below this many decoder weights a step's tensors are small: one thread beats two (measured 10-20x
on a busy two-core machine, as for toy models)."""


def threads_for(d_sae: int, d_in: int) -> AbstractContextManager[None]:
    """One thread for a small SAE (``toy.single_thread``), torch's default otherwise."""
    from workers.compute.toy import single_thread

    return single_thread() if d_sae * d_in <= SMALL_SAE else nullcontext()


def shuffled_batches(chunks: Iterable[torch.Tensor], buffer_tokens: int, batch_tokens: int,
                     generator: torch.Generator, reuse: int = 1) -> Iterator[torch.Tensor]:
    """Batches [batch_tokens, d] drawn from a buffer that mixes many chunks; at the stream's end
    what is left is used too (full batches only)."""
    pending: list[torch.Tensor] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += chunk.shape[0]
        if size >= buffer_tokens:
            kept = yield from _drain(torch.cat(pending), buffer_tokens // 2, batch_tokens, generator, reuse)
            pending, size = [kept], kept.shape[0]
    if size:
        yield from _drain(torch.cat(pending), 0, batch_tokens, generator, reuse)


def _drain(buffer: torch.Tensor, keep: int, batch_tokens: int, generator: torch.Generator,
           reuse: int) -> Generator[torch.Tensor, None, torch.Tensor]:
    """Shuffle the buffer, yield whole batches of all but (at least) ``keep`` tokens, each token
    ``reuse`` times; return the tokens left for the next fill."""
    buffer = buffer[torch.randperm(buffer.shape[0], generator=generator).to(buffer.device)]
    n_out = max(0, buffer.shape[0] - keep) // batch_tokens * batch_tokens
    out = buffer[:n_out]
    for _ in range(reuse):
        for start in range(0, n_out, batch_tokens):
            yield out[start : start + batch_tokens]
        out = out[torch.randperm(n_out, generator=generator).to(out.device)]
    return buffer[n_out:]


@dataclass
class TrainResult:
    sae: SparseAutoencoder
    loss_curve: list[dict[str, float]]
    """Every LOSS_EVERY steps: step, loss, fvu (of the batch), aux loss, dead fraction."""
    scale: float
    """The input scale that was folded into the weights."""


def train(chunks: Iterable[torch.Tensor], d_in: int, config: TrainConfig, device: torch.device | str = "cpu",
          progress: Callable[[int, int], None] | None = None, hook_name: str = "") -> TrainResult:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    batches = shuffled_batches(chunks, config.buffer_tokens, config.batch_tokens, generator, config.reuse)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"not enough activations for one batch of {config.batch_tokens} tokens")
    first = first.to(device).float()
    scale = math.sqrt(d_in) / float(first.norm(dim=-1).mean().clamp_min(1e-12))
    sae = _init(d_in, config, first * scale, hook_name).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate(), betas=(0.9, 0.999))
    since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    state: dict[str, Any] = {"threshold": None}  # BatchTopK's running threshold
    curve: list[dict[str, float]] = []
    batch: torch.Tensor | None = first
    for step in range(config.steps):
        if batch is None:
            break
        x = batch.to(device).float() * scale
        parts = _loss(sae, x, config, since_fired >= config.dead_after_tokens, state)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        _project_decoder_grad(sae)
        optimizer.step()
        _normalize_decoder(sae)
        if config.architecture == "jumprelu":
            with torch.no_grad():
                sae.threshold.clamp_(min=0)
        since_fired = torch.where(parts["fired"], 0, since_fired + x.shape[0])
        if step % LOSS_EVERY == 0 or step == config.steps - 1:
            curve.append(_curve_point(step, parts, since_fired, config))
        if progress is not None:
            progress(step + 1, config.steps)
        batch = next(batches, None)
    if config.architecture in ("batchtopk", "matryoshka"):
        with torch.no_grad():
            sae.threshold.fill_(state["threshold"] or 0.0)
    return TrainResult(_fold_scale(sae, scale), curve, scale)


def _init(d_in: int, config: TrainConfig, sample: torch.Tensor, hook_name: str) -> SparseAutoencoder:
    saved_as = config.architecture if config.architecture in ("topk", "relu") else "jumprelu"
    cfg = SaeConfig(architecture=saved_as, d_in=d_in, d_sae=config.d_sae,
                    k=config.k if config.architecture == "topk" else None, hook_name=hook_name)
    sae = SparseAutoencoder(cfg)
    if saved_as == "jumprelu":
        sae.threshold.requires_grad_(config.architecture == "jumprelu")
    with torch.no_grad():
        W_dec = torch.randn(config.d_sae, d_in)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(sample.mean(0).cpu())
        if config.architecture == "jumprelu":
            sae.threshold.fill_(config.jumprelu_init_threshold)
    return sae


def _loss(sae: SparseAutoencoder, x: torch.Tensor, config: TrainConfig, dead: torch.Tensor,
          state: dict[str, Any]) -> dict[str, torch.Tensor]:
    pre = _train_pre_acts(sae, x)
    variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    arch = config.architecture
    if arch == "topk":
        top = pre.topk(config.k, dim=-1)
        values = torch.relu(top.values)
        x_hat = _sparse_decode(sae, top.indices, values)
        fired = torch.zeros(config.d_sae, dtype=torch.bool, device=x.device)
        fired[top.indices[values > 0]] = True
        l0 = (values > 0).sum(-1).float().mean()
        residual = x - x_hat
        loss = residual.pow(2).sum() / variance
    elif arch in ("batchtopk", "matryoshka"):
        f, smallest = sparsity.batch_topk(pre, config.k)
        state["threshold"] = sparsity.update_threshold(state["threshold"], smallest)
        fired, l0 = (f > 0).any(0), (f > 0).sum(-1).float().mean()
        if arch == "matryoshka":
            prefixes = sparsity.matryoshka_prefixes(config.d_sae, config.matryoshka_prefixes)
            outs = sparsity.matryoshka_reconstructions(f, sae.W_dec, sae.b_dec, prefixes)
            loss = sum((x - out).pow(2).sum() for out in outs) / (variance * len(outs))
            residual = x - outs[-1]
        else:
            residual = x - sae.decode(f)
            loss = residual.pow(2).sum() / variance
    else:
        if arch == "relu":
            f = torch.relu(pre)
            penalty = config.l1_coefficient * (f * sae.W_dec.norm(dim=1)).sum(-1).mean() / x.shape[-1]
        else:
            f, per_token = sparsity.jumprelu(pre, sae.threshold, config.jumprelu_bandwidth)
            penalty = config.l0_coefficient * per_token.mean()
        residual = x - sae.decode(f)
        fired, l0 = (f > 0).any(0), (f > 0).sum(-1).float().mean()
        loss = residual.pow(2).sum(-1).mean() / x.shape[-1] + penalty
    fvu = residual.detach().pow(2).sum() / variance
    aux = _auxk(sae, pre, residual.detach(), dead, variance) if arch in TOPK_LIKE else x.new_zeros(())
    return {"loss": loss + AUXK_COEF * aux, "fvu": fvu, "aux": aux.detach(), "fired": fired, "l0": l0}


def _train_pre_acts(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """``(x - b_dec) @ W_enc + b_enc`` written as ``x @ W_enc + (b_enc - b_dec @ W_enc)``: the same
    value, but b_dec's gradient then costs a vector-matrix product instead of a third [B, d_in,
    d_sae] matrix product (the gradient with respect to the input)."""
    if not sae.cfg.apply_b_dec_to_input:
        return x @ sae.W_enc + sae.b_enc
    return x @ sae.W_enc + (sae.b_enc - sae.b_dec @ sae.W_enc)


def _sparse_decode(sae: SparseAutoencoder, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] + b_dec without a dense [B, d_sae] product."""
    return nn.functional.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum") + sae.b_dec


def _auxk(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
          variance: torch.Tensor) -> torch.Tensor:
    """Reconstruct the residual of the live latents with the top d_in/2 dead ones."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(residual.shape[-1] // 2, n_dead)
    scale = min(n_dead / (residual.shape[-1] // 2), 1.0)
    dead_ids = dead.nonzero().squeeze(1)
    top = pre[:, dead_ids].topk(k_aux, dim=-1, sorted=False)  # [B, k_aux] among the dead only
    acts = torch.relu(top.values)
    e_hat = nn.functional.embedding_bag(dead_ids[top.indices], sae.W_dec, per_sample_weights=acts, mode="sum")
    return scale * (e_hat - residual).pow(2).sum() / variance


@torch.no_grad()
def _normalize_decoder(sae: SparseAutoencoder) -> None:
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def _project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Drop the part of each decoder row's gradient along the row (rows stay unit norm)."""
    grad = sae.W_dec.grad
    if grad is not None:
        grad -= (grad * sae.W_dec).sum(1, keepdim=True) * sae.W_dec


def _curve_point(step: int, parts: dict[str, torch.Tensor], since_fired: torch.Tensor,
                 config: TrainConfig) -> dict[str, float]:
    return {"step": step, "loss": round(float(parts["loss"].detach()), 6), "fvu": round(float(parts["fvu"]), 6),
            "aux": round(float(parts["aux"]), 6), "l0": round(float(parts["l0"]), 3),
            "dead": round(float((since_fired >= config.dead_after_tokens).float().mean()), 6)}


@torch.no_grad()
def _fold_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """Trained on s*x: encode((s x - b) W + c) = encode((x - b/s)(s W) + c); decode / s."""
    tensors = sae.tensors()
    tensors["W_enc"] = tensors["W_enc"] * scale
    tensors["W_dec"] = tensors["W_dec"] / scale
    tensors["b_dec"] = tensors["b_dec"] / scale
    return SparseAutoencoder(sae.cfg, tensors)
