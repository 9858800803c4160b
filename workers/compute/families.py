"""Feature families: each feature of a wider SAE matched to its most similar feature (decoder
cosine) in a narrower SAE at the same hook point (feature splitting: the children of a parent), and
each feature of one layer's SAE to its most similar in the next layer's."""

from __future__ import annotations

import torch

CHUNK = 4096  # rows of the wider dictionary per cosine block: [CHUNK, d_narrow] floats at a time


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(w.float(), dim=-1)


def nearest(queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``queries`` [m, d] the index of the key row [n, d] with the highest cosine,
    and that cosine; ties go to the lower key index."""
    q, k = _unit_rows(queries), _unit_rows(keys)
    best_i, best_c = [], []
    for start in range(0, len(q), CHUNK):
        cos = q[start:start + CHUNK] @ k.T  # [chunk, n]
        c, i = cos.max(dim=1)
        best_i.append(i)
        best_c.append(c)
    if not best_i:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.cat(best_i), torch.cat(best_c)


def parents(narrow: torch.Tensor, wide: torch.Tensor, min_cosine: float) -> list[tuple[int, int, float]]:
    """(parent in ``narrow``, child in ``wide``, cosine) for every wide feature whose nearest narrow
    feature has a cosine of at least ``min_cosine``."""
    index, cosine = nearest(wide, narrow)
    keep = (cosine >= min_cosine).nonzero().flatten().tolist()
    return [(int(index[j]), j, float(cosine[j])) for j in keep]
