"""The offline label score: does a label's MiniLM embedding rank its unit's firing contexts
above silent ones? Stored as a ``label_auc`` Score on the label (0.5 is chance, 1 perfect).

Firing contexts are the unit's top and interval examples. Silent contexts are drawn at random
from the run's corpus and kept only where the unit's activation is at most 0 on every token
(checked with a forward pass, not assumed).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.db.models import F

from browser.catalog.models import Score, Source
from browser.catalog.services import label_score_set
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.labels.models import Label
from workers.compute import hooks
from workers.compute.embed import SentenceEmbedder, label_auc
from workers.pipeline.loader import device_for, model_on, source_sae

NAME, VERSION = "label_auc", 1
SAMPLE_CONTEXTS = 256
MIN_SILENT = 8
BATCH = 32


def _stale_labels(source: Source, force: bool) -> list[Label]:
    labels = Label.objects.filter(unit__source=source, unit__stats_run__isnull=False).select_related("unit")
    if not force:
        fresh = Score.objects.filter(name=NAME, version=VERSION, label__isnull=False,
                                     computed__gte=F("label__updated"))
        labels = labels.exclude(pk__in=fresh.values("label_id"))
    return list(labels.order_by("id"))


def _sample(corpus_id: int, seed: int) -> list[Context]:
    ids = list(Context.objects.filter(corpus_id=corpus_id).values_list("id", flat=True))
    chosen = sorted(random.Random(seed).sample(ids, min(SAMPLE_CONTEXTS, len(ids))))
    return list(Context.objects.filter(pk__in=chosen).order_by("pk"))


@torch.inference_mode()
def _max_activations(source: Source, contexts: list[Context], special: set[int]) -> torch.Tensor:
    """[C, n_units] each unit's max over the real, non-special tokens of each context."""
    device = device_for()
    torch_model, arch, _ = model_on(source.model, device)
    encode = source_sae(source, device).encode if source.kind in (Source.Kind.SAE, Source.Kind.TRANSCODER) else None
    out = []
    for start in range(0, len(contexts), BATCH):
        rows = [decode_tokens(bytes(c.tokens)) for c in contexts[start:start + BATCH]]
        length = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), length), dtype=torch.int64)
        valid = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            valid[i, : len(r)] = True
        mask = valid.long()
        valid &= ~torch.isin(ids, torch.tensor(sorted(special) or [-1]))
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(torch_model, arch, [source.hook_point], source.model.n_layers, captured.__setitem__):
            hooks.forward(torch_model, ids.to(device), mask.to(device))
        acts = captured[source.hook_point]
        acts = encode(acts) if encode is not None else acts  # [B, L, n_units]
        acts = acts.float().masked_fill(~valid.to(device).unsqueeze(-1), float("-inf"))
        out.append(acts.amax(dim=1).cpu())
    return torch.cat(out)


def label_scores(*, source_id: int, force: bool = False, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Score every label of the source whose score is missing or older than the label."""
    source = Source.objects.select_related("model", "model__tokenizer").get(pk=source_id)
    labels = _stale_labels(source, force)
    counts = {"scored": 0, "too_dense": 0}
    if not labels:
        return counts
    tokenizer = model_on(source.model, "cpu")[2]
    special = set(source.model.tokenizer.special_ids) if source.model.tokenizer else set()
    run = labels[0].unit.stats_run
    assert run is not None  # _stale_labels keeps harvested units only
    sample = _sample(run.corpus_id, seed)
    maxima = _max_activations(source, sample, special)
    embedder = SentenceEmbedder(Path(settings.CACHE_DIR))
    text = {c.pk: tokenizer.decode(decode_tokens(bytes(c.tokens)), skip_special_tokens=True) for c in sample}
    for done, label in enumerate(labels, start=1):
        counts[_score_one(label, sample, maxima, text, tokenizer, embedder)] += 1
        if progress is not None:
            progress(done, len(labels))
    return counts


def _score_one(label: Label, sample: list[Context], maxima: torch.Tensor, text: dict[int, str], tokenizer: Any,
               embedder: SentenceEmbedder) -> str:
    unit = label.unit
    silent = [text[c.pk] for i, c in enumerate(sample) if maxima[i, unit.index] <= 0]
    if len(silent) < MIN_SILENT:
        label_score_set(label=label, name=NAME, version=VERSION, value=None)
        return "too_dense"
    examples = Example.objects.filter(unit=unit, run=unit.stats_run, kind__in=[0, 1]).values_list(
        "context__tokens", flat=True)
    firing = [tokenizer.decode(decode_tokens(bytes(t)), skip_special_tokens=True) for t in examples]
    value = label_auc(embedder, label.text, firing, silent)
    label_score_set(label=label, name=NAME, version=VERSION, value=value, run_id=unit.stats_run_id,
                    details={"firing": len(firing), "silent": len(silent), "sampled": len(sample)})
    return "scored"
