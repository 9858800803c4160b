"""The real-hook side of a sweep: activations read once from the model over the corpus (at most
``MAX_TOKENS`` valid tokens, kept in memory and reshuffled for every SAE of the grid), and each
SAE measured on the held-out contexts as ``train_sae`` measures it (FVU, L0, dead fraction; for
causal LMs the next-token loss with the SAE spliced in), plus the dense fraction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from workers.compute import hooks, loading
from workers.compute.recovery import DENSE
from workers.compute.sae import quality
from workers.pipeline.sae_train import EVAL_CONTEXTS, _Activations, _context_batches
from workers.pipeline.saes import SaeInputError, expected_d_in

MAX_TOKENS = 65_536


def real_check(model: Model, hook: str, corpus_id: int) -> None:
    corpus = Corpus.objects.filter(pk=corpus_id).first()
    if corpus is None or corpus.status != Corpus.Status.READY or corpus.n_contexts < 2:
        raise SaeInputError("the corpus is missing, not ready or has fewer than 2 contexts")
    if corpus.tokenizer_id != model.tokenizer_id:
        raise SaeInputError(f"corpus {corpus.name!r} was not tokenized for {model.name}")
    try:
        expected_d_in(model, hook)
    except hooks.HookError as exc:
        raise SaeInputError(str(exc)) from None


class RealData:
    def __init__(self, model: Model, hook: str, corpus_id: int, config: Any, progress: Callable[..., None]) -> None:
        corpus = Corpus.objects.select_related("tokenizer").get(pk=corpus_id)
        arch = hooks.architecture_for(model.config.get("model_type", model.architecture))
        torch_model = loading.load_torch_model(model.location, Path(settings.CACHE_DIR), arch.causal, "cpu", "float32")
        tok = loading.load_tokenizer(model.location, Path(settings.CACHE_DIR))
        pad = int(tok.pad_token_id) if tok.pad_token_id is not None else 0
        self.acts = _Activations(model, torch_model, arch, hook, corpus, set(corpus.tokenizer.special_ids), pad)
        n_eval = max(1, min(EVAL_CONTEXTS, corpus.n_contexts // 10))
        self.eval_range = range(corpus.n_contexts - n_eval, corpus.n_contexts)
        self.causal, self.hook, self.config = arch.causal, hook, config
        self.d_in = expected_d_in(model, hook)
        progress(0, None, "reading activations", force=True)
        self.cache = self._read(range(0, corpus.n_contexts - n_eval))

    def _read(self, indices: range) -> torch.Tensor:
        out, total = [], 0
        for chunk in self.acts.once(indices):
            out.append(chunk.cpu())
            total += len(chunk)
            if total >= MAX_TOKENS:
                break
        if not out:
            raise SaeInputError("the training contexts hold no tokens to train on")
        return torch.cat(out)[:MAX_TOKENS]

    def chunks(self) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed)
        while True:
            yield self.cache[torch.randperm(len(self.cache), generator=generator)]

    @torch.no_grad()
    def measure(self, sae: Any) -> dict[str, Any]:
        stats: dict[str, Any] = quality.reconstruction_quality(sae, self.acts.once(self.eval_range))
        fires = torch.zeros(sae.cfg.d_sae)
        tokens = 0
        for chunk in self.acts.once(self.eval_range):
            fires += (sae.encode(chunk) > 0).sum(0)
            tokens += len(chunk)
        stats["dense_fraction"] = float((fires / max(tokens, 1) > DENSE).float().mean())
        if self.causal:
            a = self.acts
            batches = ((b.ids, b.attention_mask) for b in _context_batches(a.corpus, self.eval_range, a.special, a.pad))
            stats.update(quality.loss_recovered(a.torch_model, a.arch, a.model.n_layers, self.hook, sae, batches))
        return stats
