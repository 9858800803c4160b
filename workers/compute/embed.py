"""Sentence embeddings with MiniLM (all-MiniLM-L6-v2: mean pooling over tokens, then unit
length, as sentence-transformers does), and the ranking AUC of a label against contexts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workers.compute import loading

EMBEDDER = "minilm-l6"
MAX_TOKENS = 256


class SentenceEmbedder:
    def __init__(self, cache_dir: Path, device: str = "cpu") -> None:
        self.model = loading.load_torch_model(EMBEDDER, cache_dir, False, device, "float32")
        self.tokenizer = loading.load_tokenizer(EMBEDDER, cache_dir)
        self.device = device

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[N, d] unit vectors, on the CPU, in the order of ``texts``.

        Texts go through the model sorted by length, so a batch pads little (padding is masked
        out, so each vector is the same whatever its batch holds, up to float rounding).
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = []
        for start in range(0, len(order), batch_size):
            chunk = [texts[i] for i in order[start:start + batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [B, T, d]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.empty(0, self.model.config.hidden_size)
        vectors = torch.empty(len(texts), out[0].shape[1])
        vectors[torch.tensor(order)] = torch.cat(out)
        return vectors


def ranking_auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a random positive scores above a random negative), ties counting one half (the
    Mann-Whitney U statistic divided by the number of pairs)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("the AUC needs at least one positive and one negative")
    diff = positive.double().unsqueeze(1) - negative.double().unsqueeze(0)  # [P, N]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def label_auc(embedder: Any, label: str, firing: Sequence[str], silent: Sequence[str]) -> float:
    """How well the label's embedding ranks the unit's firing contexts above silent ones."""
    vectors = embedder.embed([label, *firing, *silent])
    similarity = vectors[1:] @ vectors[0]  # [P + N]
    return ranking_auc(similarity[: len(firing)], similarity[len(firing):])
