"""Activations of a hook over a corpus's contexts, read batch by batch for SAE and transcoder
training, sweeps and layer diagnosis (no module here imports the training jobs)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from browser.catalog.models import Model
from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from workers.compute import hooks
from workers.compute.harvest import TokenBatch, make_batch
from workers.pipeline.saes import SaeInputError

FETCH_CONTEXTS = 256
BATCH_CONTEXTS = 16
EVAL_CONTEXTS = 128  # at most this many held-out contexts (and never more than a tenth)


def _context_batches(corpus: Corpus, indices: range, special: set[int], pad: int) -> Iterator[TokenBatch]:
    for start in range(indices.start, indices.stop, FETCH_CONTEXTS):
        wanted = list(range(start, min(start + FETCH_CONTEXTS, indices.stop)))
        rows = dict(Context.objects.filter(corpus=corpus, index__in=wanted).values_list("index", "tokens"))
        for b in range(0, len(wanted), BATCH_CONTEXTS):
            chunk = wanted[b : b + BATCH_CONTEXTS]
            yield make_batch(chunk, [decode_tokens(bytes(rows[i])) for i in chunk], corpus.context_length,
                             special, True, pad)


class _Activations:
    """Activations [n, d_in] of the valid tokens of some contexts, read with a hook that is
    registered only while a batch runs (so the model is free between yields)."""

    def __init__(self, model: Model, torch_model: torch.nn.Module, arch: hooks.Architecture, hook: str,
                 corpus: Corpus, special: set[int], pad: int) -> None:
        self.model, self.torch_model, self.arch, self.hook = model, torch_model, arch, hook
        self.corpus, self.special, self.pad = corpus, special, pad
        self.device = next(torch_model.parameters()).device

    def of(self, batch: TokenBatch) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(self.torch_model, self.arch, [self.hook], self.model.n_layers, captured.__setitem__):
            hooks.forward(self.torch_model, batch.ids.to(self.device), batch.attention_mask.to(self.device))
        return captured[self.hook][~batch.invalid.to(self.device)].float()

    def once(self, indices: range) -> Iterator[torch.Tensor]:
        for batch in _context_batches(self.corpus, indices, self.special, self.pad):
            yield self.of(batch)

    def forever(self, indices: range) -> Iterator[torch.Tensor]:
        while True:
            seen = 0
            for acts in self.once(indices):
                seen += acts.shape[0]
                yield acts
            if seen == 0:
                raise SaeInputError("the training contexts hold no tokens to train on")
