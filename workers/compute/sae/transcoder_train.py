"""Training TopK transcoders: a sparse dictionary that reads a layer's MLP input and predicts its MLP
output (Dunefsky et al. 2024; circuit-tracer's per-layer transcoders), optionally with a linear skip
term ``x @ W_skip.T`` (Paulo et al. 2025). The SAE trainer's machinery is reused: the shuffle buffer,
TopK with the AuxK loss on dead latents, unit-norm decoder rows, the loss curve.

Chunks arrive as ``[n, d_in + d_out]``: each token's MLP input and MLP output side by side, so the
shuffle buffer keeps the pairs together. Inputs are scaled to mean norm sqrt(d_in) and targets to
mean norm sqrt(d_out) while training; both scales are folded into the weights at the end, so the
returned transcoder reads raw MLP inputs and predicts raw MLP outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from workers.compute.sae.model import SaeConfig, SparseAutoencoder
from workers.compute.sae.train import (
    AUXK_COEF,
    LOSS_EVERY,
    TrainConfig,
    _auxk,
    _normalize_decoder,
    _project_decoder_grad,
    _sparse_decode,
    shuffled_batches,
)


@dataclass
class TranscoderResult:
    transcoder: SparseAutoencoder
    loss_curve: list[dict[str, float]]
    """Every LOSS_EVERY steps: step, loss, fvu (of the batch's MLP output), aux loss, l0, dead fraction."""
    scales: tuple[float, float]
    """(input scale, output scale) folded into the weights."""


def pairs(inputs: Iterable[torch.Tensor], outputs: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Chunks [n, d_in + d_out] from matching chunks of MLP inputs [n, d_in] and outputs [n, d_out]."""
    for x, y in zip(inputs, outputs, strict=True):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"MLP inputs and outputs differ in tokens ({x.shape[0]} vs {y.shape[0]})")
        yield torch.cat([x, y], dim=-1)


def check_config(config: TrainConfig) -> None:
    if config.architecture != "topk":
        raise ValueError(f"transcoders are trained as TopK dictionaries (got architecture {config.architecture!r})")


def train_transcoder(chunks: Iterable[torch.Tensor], d_in: int, d_out: int, config: TrainConfig, *,
                     skip: bool = False, device: torch.device | str = "cpu", hook_name: str = "",
                     progress: Callable[[int, int], None] | None = None) -> TranscoderResult:
    """Train on chunks [n, d_in + d_out] (see :func:`pairs`)."""
    check_config(config)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    batches = shuffled_batches(_checked(chunks, d_in + d_out), config.buffer_tokens, config.batch_tokens,
                               generator, config.reuse)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"not enough activations for one batch of {config.batch_tokens} tokens")
    first = first.to(device).float()
    x0, y0 = first[:, :d_in], first[:, d_in:]
    scales = (math.sqrt(d_in) / float(x0.norm(dim=-1).mean().clamp_min(1e-12)),
              math.sqrt(d_out) / float(y0.norm(dim=-1).mean().clamp_min(1e-12)))
    tc = _init(d_in, d_out, config, skip, (y0 * scales[1]).mean(0), hook_name).to(device)
    optimizer = torch.optim.Adam(tc.parameters(), lr=config.learning_rate(), betas=(0.9, 0.999))
    since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    curve: list[dict[str, float]] = []
    batch: torch.Tensor | None = first
    for step in range(config.steps):
        if batch is None:
            break
        batch = batch.to(device).float()
        x, y = batch[:, :d_in] * scales[0], batch[:, d_in:] * scales[1]
        parts = _loss(tc, x, y, config, since_fired >= config.dead_after_tokens)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        _project_decoder_grad(tc)
        optimizer.step()
        _normalize_decoder(tc)
        since_fired = torch.where(parts["fired"], 0, since_fired + x.shape[0])
        if step % LOSS_EVERY == 0 or step == config.steps - 1:
            curve.append(_point(step, parts, since_fired, config))
        if progress is not None:
            progress(step + 1, config.steps)
        batch = next(batches, None)
    return TranscoderResult(_fold_scales(tc, *scales), curve, scales)


def _checked(chunks: Iterable[torch.Tensor], width: int) -> Iterator[torch.Tensor]:
    for chunk in chunks:
        if chunk.ndim != 2 or chunk.shape[1] != width:
            raise ValueError(f"transcoder training chunks must be [n, d_in + d_out] = [n, {width}] "
                             f"(got shape {list(chunk.shape)})")
        yield chunk


def _init(d_in: int, d_out: int, config: TrainConfig, skip: bool, mean_out: torch.Tensor,
          hook_name: str) -> SparseAutoencoder:
    cfg = SaeConfig(architecture="topk", d_in=d_in, d_sae=config.d_sae, k=config.k, apply_b_dec_to_input=False,
                    hook_name=hook_name, transcoder=True, d_out=d_out, skip=skip)
    tc = SparseAutoencoder(cfg)
    with torch.no_grad():
        W_dec = torch.randn(config.d_sae, d_out)
        tc.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        # The encoder reads another space than the decoder writes: random unit columns, not W_dec.T.
        W_enc = torch.randn(d_in, config.d_sae)
        tc.W_enc.copy_(W_enc / W_enc.norm(dim=0, keepdim=True))
        tc.b_dec.copy_(mean_out.cpu())
    return tc


def _loss(tc: SparseAutoencoder, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
          dead: torch.Tensor) -> dict[str, torch.Tensor]:
    pre = x @ tc.W_enc + tc.b_enc
    top = pre.topk(config.k, dim=-1)
    values = torch.relu(top.values)
    y_hat = _sparse_decode(tc, top.indices, values) + tc.skip_out(x)
    variance = (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
    residual = y - y_hat
    fired = torch.zeros(config.d_sae, dtype=torch.bool, device=x.device)
    fired[top.indices[values > 0]] = True
    aux = _auxk(tc, pre, residual.detach(), dead, variance)
    loss = residual.pow(2).sum() / variance
    return {"loss": loss + AUXK_COEF * aux, "fvu": loss.detach(), "aux": aux.detach(), "fired": fired,
            "l0": (values > 0).sum(-1).float().mean()}


def _point(step: int, parts: dict[str, torch.Tensor], since_fired: torch.Tensor,
           config: TrainConfig) -> dict[str, float]:
    return {"step": step, "loss": round(float(parts["loss"].detach()), 6), "fvu": round(float(parts["fvu"]), 6),
            "aux": round(float(parts["aux"]), 6), "l0": round(float(parts["l0"]), 3),
            "dead": round(float((since_fired >= config.dead_after_tokens).float().mean()), 6)}


@torch.no_grad()
def _fold_scales(tc: SparseAutoencoder, sx: float, sy: float) -> SparseAutoencoder:
    """Trained to map sx*x to sy*y: pre = x (sx W_enc) + b_enc; y = (f W_dec + b_dec + sx x W_skip.T) / sy."""
    tensors = tc.tensors()
    tensors["W_enc"] = tensors["W_enc"] * sx
    tensors["W_dec"] = tensors["W_dec"] / sy
    tensors["b_dec"] = tensors["b_dec"] / sy
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"] * (sx / sy)
    return SparseAutoencoder(tc.cfg, tensors)


@torch.no_grad()
def transcoder_quality(tc: SparseAutoencoder, chunks: Iterable[torch.Tensor]) -> dict[str, float]:
    """Held-out quality from chunks [n, d_in + d_out]: FVU of the MLP output (squared error over the
    output's variance about its mean, pooled over all tokens), mean L0 and the share of dead latents."""
    d_in = tc.cfg.d_in
    sums = {"err": 0.0, "y": 0.0, "y2": 0.0, "l0": 0.0, "n": 0}
    y_sum: torch.Tensor | None = None
    fired = torch.zeros(tc.cfg.d_sae, dtype=torch.bool)
    for chunk in chunks:
        x, y = chunk[:, :d_in].float().to(tc.W_enc.device), chunk[:, d_in:].float().to(tc.W_enc.device)
        f = tc.encode(x)
        y_hat = tc.decode(f) + tc.skip_out(x)
        sums["err"] += float((y - y_hat).pow(2).sum())
        sums["y2"] += float(y.pow(2).sum())
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
        sums["l0"] += float((f > 0).sum())
        sums["n"] += x.shape[0]
        fired |= (f > 0).any(0).cpu()
    n = int(sums["n"])
    if n == 0 or y_sum is None:
        raise ValueError("no held-out tokens to measure the transcoder on")
    variance = sums["y2"] - float(y_sum.pow(2).sum()) / n
    return {"fvu": sums["err"] / max(variance, 1e-12), "l0": sums["l0"] / n,
            "dead_fraction": float((~fired).float().mean()), "tokens": float(n)}
