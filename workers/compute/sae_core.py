"""SAEBench's core metrics of one SAE on a sample of its hook's activations, for a side-by-side panel
of every SAE on a hook: FVU, L0, dead and dense fractions (``recovery.DENSE``), each latent's firing
density as a histogram over log10 bins, and the decoder's cosine structure (each live latent's largest
|cosine| with another latent's decoder direction, as a histogram, and its mean)."""

from __future__ import annotations

from typing import Any

import torch

from workers.compute.recovery import DENSE
from workers.compute.sae.model import SparseAutoencoder

DENSITY_EDGES = (-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0)
"""log10 firing-density bins; a latent that never fires is counted apart (dead)."""
COSINE_EDGES = tuple(i / 10 for i in range(11))


def histogram(values: torch.Tensor, edges: tuple[float, ...]) -> list[int]:
    """Counts of ``values`` in [edges[i], edges[i+1]) (the last bin closed), values outside clamped in."""
    e = torch.tensor(edges, dtype=torch.float64)
    index = (torch.bucketize(values.double().clamp(e[0], e[-1]), e, right=True) - 1).clamp(0, len(edges) - 2)
    return torch.bincount(index, minlength=len(edges) - 1).tolist()


def max_decoder_cosine(W_dec: torch.Tensor, rows: torch.Tensor | None = None, chunk: int = 2048) -> torch.Tensor:
    """[d_sae, d_in] -> [len(rows)]: each chosen latent's largest |cos| with any other latent."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)
    rows = torch.arange(len(unit)) if rows is None else rows
    out = []
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        cos = (unit[r] @ unit.T).abs()  # [c, d_sae]
        cos[torch.arange(len(r)), r] = 0.0
        out.append(cos.max(dim=1).values)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def core_metrics(sae: SparseAutoencoder, x: torch.Tensor) -> dict[str, Any]:
    """x [n, d_in] activations of valid tokens -> the SAE's core metrics on them."""
    normalized, undo = sae.normalize(x.float())
    f = sae.activate(sae.pre_acts(normalized))  # [n, d_sae]
    err = x - sae.decode(f, undo)
    centred = x.double() - x.double().mean(dim=0)
    density = (f > 0).double().mean(dim=0)  # [d_sae]
    live = density > 0
    max_cos = max_decoder_cosine(sae.W_dec.detach(), live.nonzero().flatten())
    return {"fvu": float(err.double().pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)),
            "l0": float((f > 0).sum(dim=1).double().mean()), "dead_fraction": float((~live).double().mean()),
            "dense_fraction": float((density > DENSE).double().mean()), "tokens": len(x),
            "density_edges": list(DENSITY_EDGES), "density_hist": histogram(density[live].log10(), DENSITY_EDGES),
            "cosine_edges": list(COSINE_EDGES), "max_cosine_hist": histogram(max_cos, COSINE_EDGES),
            "mean_max_cosine": float(max_cos.mean()) if len(max_cos) else 0.0}
