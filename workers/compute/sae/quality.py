"""How good an SAE is on held-out tokens: FVU, L0, dead fraction, and for causal LMs the
next-token loss with the SAE spliced in, against the clean model and zero ablation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from workers.compute import hooks
from workers.compute.hooks import Architecture
from workers.compute.sae.model import SparseAutoencoder


@torch.no_grad()
def reconstruction_quality(sae: SparseAutoencoder, chunks: Iterable[torch.Tensor]) -> dict[str, float]:
    """chunks: activations [n, d_in] of valid tokens. FVU is 1 - R^2 against the per-dimension mean."""
    device = sae.W_enc.device
    n = 0
    sum_x = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    sum_err = torch.zeros((), dtype=torch.float64, device=device)
    active = torch.zeros((), dtype=torch.float64, device=device)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    for chunk in chunks:
        x = chunk.to(device).float()
        normalized, undo = sae.normalize(x)
        f = sae.activate(sae.pre_acts(normalized))
        err = x - sae.decode(f, undo)
        n += x.shape[0]
        sum_x += x.sum(0, dtype=torch.float64)
        sum_x2 += x.double().pow(2).sum()
        sum_err += err.double().pow(2).sum()
        active += (f > 0).sum(dtype=torch.float64)
        fired |= (f > 0).any(0)
    if n == 0:
        raise ValueError("no held-out tokens to measure the SAE on")
    variance = float(sum_x2 - sum_x.pow(2).sum() / n)
    return {"fvu": float(sum_err) / max(variance, 1e-12), "l0": float(active) / n,
            "dead_fraction": 1.0 - float(fired.float().mean()), "tokens": float(n)}


@contextmanager
def splice(model: nn.Module, arch: Architecture, hook: str, n_layers: int,
           replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the activation at ``hook`` by ``replace(activation)`` for the whole forward pass."""
    with hooks.splice(model, arch, hook, n_layers, replace):
        yield


def _next_token_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over targets whose own and previous positions are real."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    loss = nn.functional.cross_entropy(logits[valid], targets[valid], reduction="sum")
    return float(loss), int(valid.sum())


@torch.no_grad()
def loss_recovered(model: nn.Module, arch: Architecture, n_layers: int, hook: str, sae: SparseAutoencoder,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean next-token loss clean, with the SAE's reconstruction spliced in, and with the
    activation zeroed; loss recovered = (zero - sae) / (zero - clean), left out when zeroing
    changes nothing."""
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    count = 0
    for ids, mask in batches:
        loss, n = _next_token_loss(model, ids, mask)
        totals["clean"] += loss
        count += n
        with splice(model, arch, hook, n_layers, lambda a: sae(a).to(a.dtype)):
            totals["sae"] += _next_token_loss(model, ids, mask)[0]
        with splice(model, arch, hook, n_layers, torch.zeros_like):
            totals["zero"] += _next_token_loss(model, ids, mask)[0]
    if count == 0:
        raise ValueError("no held-out tokens to measure the next-token loss on")
    clean, spliced, zero = (totals[key] / count for key in ("clean", "sae", "zero"))
    out = {"ce_clean": clean, "ce_sae": spliced, "ce_zero": zero}
    if abs(zero - clean) > 1e-9:  # otherwise undefined (and NaN cannot be stored as JSON)
        out["loss_recovered"] = (zero - spliced) / (zero - clean)
    return out
