"""A run on this worker: its model and sources loaded, its contexts fetched in batches, its job notes."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from browser.corpora.models import Context, Corpus
from browser.corpora.selectors import decode_tokens
from browser.runs.models import Run
from browser.runs.services import JobCancelled, job_cancel_requested, job_log
from workers.compute import hooks
from workers.compute.config import HarvestConfig
from workers.compute.harvest import SourceRuntime, TokenBatch, make_batch
from workers.pipeline.loader import device_for, model_on
from workers.pipeline.saes import sae_runtime

logger = logging.getLogger(__name__)
FETCH_CONTEXTS = 512
UNIT_OFFSET_STRIDE = 1 << 21  # distinct hash inputs per source (at most 2M units a source)


@dataclass
class Loaded:
    torch_model: torch.nn.Module
    arch: hooks.Architecture
    runtimes: list[SourceRuntime]
    special_ids: set[int]
    pad_id: int


def load_for_run(run: Run, config: HarvestConfig) -> Loaded:
    model = run.model
    torch_model, arch, tok = model_on(model, device_for(config.device), config.dtype)
    runtimes = []
    for i, source in enumerate(config.sources):
        if source.sae_id is not None:
            runtimes.append(sae_runtime(source, i * UNIT_OFFSET_STRIDE, next(torch_model.parameters()).device))
            continue
        layer, kind = hooks.parse_hook(source.hook, model.n_layers)
        n_units = model.d_mlp if kind == "mlp.hook_post" else model.d_model
        runtimes.append(SourceRuntime(source.name, source.hook, n_units, i * UNIT_OFFSET_STRIDE))
    special = set(run.corpus.tokenizer.special_ids) if config.exclude_special else set()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Loaded(torch_model, arch, runtimes, special, int(pad))


def batches(corpus: Corpus, indices: list[int], loaded: Loaded, config: HarvestConfig) -> Iterator[TokenBatch]:
    """Batches of the given context indices (ascending), fetched from PostgreSQL in chunks.

    A chunk is whole batches, so batches are cut every ``batch_size`` from the first index only:
    a shard starts at a multiple of ``batch_size``, so its batches are the same contexts as in a
    run of one shard (which contexts share a forward pass and an SAE batch sum changes results).
    """
    special = loaded.special_ids if config.exclude_special else set()
    fetch = max(1, FETCH_CONTEXTS // config.batch_size) * config.batch_size
    for start in range(0, len(indices), fetch):
        wanted = indices[start : start + fetch]
        rows = dict(Context.objects.filter(corpus=corpus, index__in=wanted).values_list("index", "tokens"))
        for b in range(0, len(wanted), config.batch_size):
            chunk = wanted[b : b + config.batch_size]
            yield make_batch(chunk, [decode_tokens(bytes(rows[i])) for i in chunk], corpus.context_length,
                             special, config.exclude_special, loaded.pad_id)



def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"



def raise_if_cancelled(run: Run) -> None:
    if run.job_id and job_cancel_requested(job_id=run.job_id):
        raise JobCancelled(f"run {run.pk} was cancelled")


def note(run: Run, line: str) -> None:
    logger.info("run %s: %s", run.pk, line)
    if run.job_id:
        job_log(job_id=run.job_id, line=line)

