"""The demo's causal part: SmolLM2 (packaged, offline) on the fixture corpus, a few layers'
neurons and a TopK SAE on one of them harvested, so steering works in the demo out of the box.
Each step skips what an earlier demo finished."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command

from browser.catalog.models import Sae
from browser.corpora.models import Corpus
from browser.corpora.services import corpus_delete

FIXTURE_CORPUS = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
MODEL, CORPUS = "smollm2-135m", "demo-smollm2"
HOOKS = "blocks.2.mlp.hook_post,blocks.4.mlp.hook_post,blocks.6.mlp.hook_post"
"""Early layers: the harvest's forward pass stops after layer 6 of 30, a fifth of the model."""
SAE_HOOK = "blocks.4.mlp.hook_post"
SAE = "blocks.4.mlp.sae-topk-2048"


@contextmanager
def phase(stdout: Any, name: str) -> Iterator[None]:
    """Write how long a step of the demo took (wall seconds: the work runs on the worker)."""
    start = time.perf_counter()
    yield
    stdout.write(f"[demo] {name}: {time.perf_counter() - start:.0f} s\n")


def causal_demo(stdout: Any) -> None:
    """Import the corpus with SmolLM2's tokenizer, train a small SAE on layer 4's neurons, harvest
    layers 2, 4, 6 and the SAE's features in one run."""
    if not Corpus.objects.filter(name=CORPUS, status=Corpus.Status.READY).exists():
        corpus_delete(name=CORPUS)
        with phase(stdout, f"import {CORPUS}"):
            call_command("import_corpus", str(FIXTURE_CORPUS), name=CORPUS, tokenizer=MODEL, stdout=stdout)
    if not Sae.objects.filter(source__model__name=MODEL, source__name=SAE).exists():
        with phase(stdout, f"train {MODEL} {SAE}"):
            call_command("train_sae", model=MODEL, corpus=CORPUS, hook=SAE_HOOK, name=SAE, width=2048, k=32,
                         steps=300, batch_tokens=512, buffer_tokens=8192, reuse=4, wait=True, stdout=stdout)
    with phase(stdout, f"harvest {MODEL}"):
        call_command("harvest", model=MODEL, corpus=CORPUS, hooks=HOOKS, saes=SAE, k=32, wait=True, stdout=stdout)
