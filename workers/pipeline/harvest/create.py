"""Creating a harvest run: validate the request, register its sources, cut it into shards."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from browser.catalog.models import Model, Source
from browser.catalog.services import source_get_or_create
from browser.corpora.models import Corpus
from browser.runs.models import Job, Run
from browser.runs.services import job_create, job_update, run_create, run_delete, shards_create
from workers.compute import hooks
from workers.compute.config import HarvestConfig, SourceConfig
from workers.pipeline.saes import sae_source_check


class HarvestInputError(ValueError):
    """A harvest that cannot run as asked; nothing was written."""


def harvest_create(*, model: Model, corpus: Corpus, config: HarvestConfig, user: Any = None) -> tuple[Run, bool]:
    """Create (or find) the run for this model, corpus and config. Returns (run, created)."""
    _validate(model, corpus, config)
    config_hash = config.hash()
    existing = Run.objects.filter(model=model, corpus=corpus, config_hash=config_hash).first()
    if existing is not None and existing.status not in {Run.Status.FAILED, Run.Status.CANCELLED}:
        return existing, False
    with transaction.atomic():
        if existing is not None:
            run_delete(run=existing)  # a failed or cancelled run is redone from scratch
        sources = [_source_for(model, s) for s in config.sources]
        job = job_create(kind=Job.Kind.HARVEST, title=f"harvest {model.name} x {corpus.name}",
                         params={}, created_by=user)
        # Shards cover whole batches, so every batch (and its float sums) is the same however
        # many shards there are.
        per_shard = max(config.batch_size, config.shard_contexts // config.batch_size * config.batch_size)
        run = run_create(model=model, corpus=corpus, config=config.to_dict(), config_hash=config_hash,
                         sources=sources, job=job, created_by=user, n_shards=-(-corpus.n_contexts // per_shard))
        job_update(job=job, params={"run_id": run.pk}, total=corpus.n_contexts)
        shards_create(run=run, n_contexts=corpus.n_contexts, shard_contexts=per_shard)
    return run, True


def _validate(model: Model, corpus: Corpus, config: HarvestConfig) -> None:
    if corpus.status != Corpus.Status.READY:
        raise HarvestInputError(f"corpus {corpus.name!r} is not ready (status: {corpus.status})")
    if corpus.tokenizer_id != model.tokenizer_id:
        raise HarvestInputError(
            f"corpus {corpus.name!r} was tokenized for {corpus.tokenizer_model.name}, whose vocabulary differs "
            f"from {model.name}'s; import it again with --tokenizer {model.name}"
        )
    if corpus.n_contexts == 0:
        raise HarvestInputError(f"corpus {corpus.name!r} has no contexts")
    for source in config.sources:
        hooks.parse_hook(source.hook, model.n_layers)
        if source.sae_id is not None:
            sae_source_check(model, source)


def _source_for(model: Model, config: SourceConfig) -> Source:
    if config.sae_id is not None:
        return sae_source_check(model, config)
    layer, kind = hooks.parse_hook(config.hook, model.n_layers)
    n_units = model.d_mlp if kind == "mlp.hook_post" else model.d_model
    return source_get_or_create(model=model, name=config.name, hook_point=config.hook, layer=layer,
                                kind=Source.Kind.NEURONS, n_units=n_units)


def neuron_sources(hook_names: list[str]) -> tuple[SourceConfig, ...]:
    return tuple(SourceConfig(name=name, hook=name) for name in hook_names)

