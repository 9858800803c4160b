"""Registering a trained toy model of superposition in the catalog, with its ground truth.

The model (kind toy) gets one source, ``hidden``: its m hidden neurons as units. Its trained
weights and the paper's metrics go to ``Model.config``; for the hidden-ReLU model, where the
hidden basis is privileged, each neuron's true features become a ``toy_true_features`` Score so
the browser's own scores can be checked against them.

``toy_harvest`` harvests a registered toy model like a real one, so its unit pages show
examples: each synthetic input is one context whose tokens are its active features (a tokenizer
whose strings are "f0".."f{n-1}"), and an example's per-token values are each active feature's
contribution W[f, k] x_f to neuron k. Statistics come from the harvest's own ``UnitAccumulator``
with one "token" per input (the neuron's activation on it), and the run is written in one
transaction like a finished harvest, so ``manage.py score --run`` works on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from django.core.exceptions import ValidationError
from django.db import transaction

from browser.catalog.models import Model, Source, Tokenizer, Unit, name_validator
from browser.catalog.services import (
    model_create,
    model_tokenizer_set,
    scores_replace,
    source_get_or_create,
    tokenizer_get_or_create,
    units_ensure,
)
from browser.corpora.models import Context, Corpus
from browser.corpora.services import contexts_write, corpus_create, corpus_mark_ready, documents_add
from browser.examples.models import Example
from browser.examples.services import examples_write, stats_write, units_set_browse_fields
from browser.runs.models import Run
from browser.runs.services import run_create
from workers.compute import toy
from workers.compute.config import HarvestConfig, SourceConfig
from workers.compute.stats import Batch, UnitAccumulator, UnitSummary, summarize

SOURCE_NAME = "hidden"
HOOK_POINT = "hidden.hook_post"
TRUE_FEATURES, TRUE_FEATURES_VERSION = "toy_true_features", 1
MAX_INPUTS = 1_000_000
"""Synthetic inputs a toy harvest may sample (each is stored as a context)."""
INPUT_BATCH = 8192


class ToyModelError(ValueError):
    """The toy model cannot be registered (bad settings or a taken name)."""


def toy_summary(model: toy.ToyModel) -> dict[str, Any]:
    """The best instance's weights and the paper's metrics, as JSON for ``Model.config``."""
    best = model.best()
    W = model.W[best]  # [n_features, n_hidden]
    return {
        "toy": model.config.to_dict(),
        "instance": best,
        "loss": model.loss.tolist(),
        "W": W.tolist(),
        "b": model.b[best].tolist(),
        "feature_norms": toy.feature_norms(W).tolist(),
        "feature_dimensionality": toy.feature_dimensionality(W).tolist(),
        "dimensions_per_feature": float(toy.dimensions_per_feature(W)),
        "represented_features": int(toy.represented_features(W)),
    }


def toy_model_register(
    *, config: toy.ToyConfig, name: str, progress: Callable[[int, int], None] | None = None
) -> Model:
    """Train ``config`` and register its lowest-loss instance as a catalog model."""
    try:
        name_validator(name)
    except ValidationError as exc:
        raise ToyModelError(f"bad model name {name!r}: {exc.messages[0]}") from None
    if Model.objects.filter(name=name).exists():
        raise ToyModelError(f"a model named {name!r} is already registered")
    trained = toy.train_toy(config, progress)
    summary = toy_summary(trained)
    with transaction.atomic():
        model = model_create(
            name=name, kind=Model.Kind.TOY, architecture=f"toy_{config.kind}", location=f"toy:{config.kind}",
            n_layers=1, d_model=config.n_hidden, d_mlp=config.n_hidden, vocab_size=0, tokenizer=None,
            config=summary,
        )
        source = source_get_or_create(model=model, name=SOURCE_NAME, hook_point=HOOK_POINT, layer=0,
                                      kind=Source.Kind.NEURONS, n_units=config.n_hidden)
        units_ensure(source=source)
        if config.kind == "hidden_relu":
            _true_features_store(source, trained.W[summary["instance"]])
    return model


def _true_features_store(source: Source, W: torch.Tensor) -> int:
    """One ``toy_true_features`` Score per neuron: value = effective number of true features,
    details = the features driving it, strongest first."""
    units = dict(Unit.objects.filter(source=source).values_list("index", "pk"))
    effective = toy.true_features_per_neuron(W)
    rows = ((units[k], TRUE_FEATURES, float(effective[k]),
             {"features": [{"feature": f, "weight": w} for f, w in features], "count": len(features),
              "floor": toy.NEURON_WEIGHT_FLOOR})
            for k, features in enumerate(toy.neuron_features(W)))
    return scores_replace(run=None, unit_ids=list(units.values()), names=(TRUE_FEATURES,),
                          version=TRUE_FEATURES_VERSION, rows=rows)


# ---- harvesting a toy model --------------------------------------------------------------------
def toy_harvest(*, model: Model, n_inputs: int, seed: int = 0, k: int = 16, samples: int = 12,
                n_intervals: int = 6) -> Run:
    """Sample ``n_inputs`` synthetic inputs at the model's feature probability and harvest its
    hidden neurons over them (a finished Run with UnitStats and Examples)."""
    if model.kind != Model.Kind.TOY:
        raise ToyModelError(f"{model.name} is not a toy model")
    if not 1 <= n_inputs <= MAX_INPUTS:
        raise ToyModelError(f"inputs must be 1..{MAX_INPUTS} (got {n_inputs})")
    settings = toy.ToyConfig.from_dict(model.config["toy"])
    W = torch.tensor(model.config["W"])  # [n_features, n_hidden]
    x = toy.sample_features([settings.feature_probability], n_inputs, settings.n_features, seed)[0]  # [N, n]
    pre = x @ W  # [N, n_hidden]
    h = torch.relu(pre) if settings.kind == "hidden_relu" else pre
    config = HarvestConfig(sources=(SourceConfig(name=SOURCE_NAME, hook=HOOK_POINT),), k=k,
                           samples_per_interval=samples, n_intervals=n_intervals, hist_stride=1, seed=seed,
                           device="cpu", extra={"toy_inputs": n_inputs})
    summaries = _toy_summaries(h, config)
    with transaction.atomic():
        corpus = _toy_corpus(model, x, seed)
        source = Source.objects.get(model=model, name=SOURCE_NAME)
        run = run_create(model=model, corpus=corpus, config=config.to_dict(), config_hash=config.hash(),
                         sources=[source], status=Run.Status.DONE, contexts_done=n_inputs)
        _toy_results_write(run, source, summaries, x, W)
    return run


def _toy_summaries(h: torch.Tensor, config: HarvestConfig) -> list[UnitSummary]:
    """The harvest's accumulator over the inputs, one "token" (the activation) per input."""
    acc = UnitAccumulator(h.shape[1], k=config.k, samples=config.samples_per_interval, hist_stride=1,
                          seed=config.seed)
    for start in range(0, len(h), INPUT_BATCH):
        chunk = h[start:start + INPUT_BATCH].contiguous()
        contexts = torch.arange(start, start + len(chunk))
        acc.update(Batch(chunk[:, None, :].clone(), contexts, torch.zeros(len(chunk), 1, dtype=torch.bool), start))
    return summarize(acc.state(), n_intervals=config.n_intervals)


def feature_tokenizer(n_features: int) -> Tokenizer:
    """A vocabulary whose token i displays as "f{i}": a synthetic input shown as its features."""
    tokens = [f"f{i}" for i in range(n_features)]
    digest = hashlib.sha256(("toy-features\n" + "\n".join(tokens)).encode()).hexdigest()
    return tokenizer_get_or_create(name=f"toy features ({n_features})", vocab_hash=digest, tokens=tokens,
                                   special_ids=[])


def _toy_corpus(model: Model, x: torch.Tensor, seed: int) -> Corpus:
    """One context per input, its tokens the input's active features in ascending order."""
    tokenizer = feature_tokenizer(x.shape[1])
    model_tokenizer_set(model=model, tokenizer=tokenizer)
    name = f"{model.name[:80]}-inputs-{seed}"
    if Corpus.objects.filter(name=name).exists():
        raise ToyModelError(f"{model.name} was already harvested with seed {seed} (corpus {name!r})")
    p = model.config["toy"]["feature_probability"]
    counts = (x > 0).sum(dim=1)
    corpus = corpus_create(name=name, tokenizer=tokenizer, tokenizer_model=model, context_length=x.shape[1],
                           origin=f"synthetic: {len(x)} inputs, p = {p}, seed {seed}")
    [document] = documents_add(corpus=corpus, rows=[{
        "title": "synthetic inputs",
        "text": f"{len(x)} sparse inputs: each feature uniform on [0, 1) with probability {p}"}])
    contexts_write(corpus=corpus, first_index=0,
                   rows=((document.pk, row.nonzero().flatten().tolist()) for row in x))
    corpus_mark_ready(corpus=corpus, n_contexts=len(x), n_tokens=int(counts.sum()))
    corpus.refresh_from_db()
    return corpus


def _toy_results_write(run: Run, source: Source, summaries: list[UnitSummary], x: torch.Tensor,
                       W: torch.Tensor) -> None:
    units = dict(Unit.objects.filter(source=source).values_list("index", "pk"))
    context_ids = dict(Context.objects.filter(corpus=run.corpus).values_list("index", "pk"))
    stats_write(run=run, rows=(
        (units[u], s.n_tokens, s.fire_count, s.fire_count / s.n_tokens if s.n_tokens else 0.0, s.mean,
         s.max if np.isfinite(s.max) else 0.0, np.asarray(s.hist, dtype="<i8").tobytes(), 1)
        for u, s in enumerate(summaries)))
    top_tokens: dict[int, str] = {}
    examples_write(run=run, rows=_toy_example_rows(summaries, units, context_ids, x, W, top_tokens))
    units_set_browse_fields(run=run, rows=((units[u], top_tokens.get(u, ""), {}) for u in range(len(summaries))))


def _toy_example_rows(summaries: list[UnitSummary], units: dict[int, int], context_ids: dict[int, int],
                      x: torch.Tensor, W: torch.Tensor, top_tokens: dict[int, str]) -> Iterator[tuple[Any, ...]]:
    """Example rows whose per-token values are each active feature's contribution W[f, k] x_f; the
    max position marks the largest contribution."""
    for u, s in enumerate(summaries):
        entries = [(Example.Kind.TOP, 0, rank, ctx, v) for rank, (ctx, v) in enumerate(s.top)]
        entries += [(Example.Kind.INTERVAL, bucket, rank, ctx, v)
                    for bucket, members in s.intervals for rank, (ctx, v) in enumerate(members)]
        entries += [(Example.Kind.RANDOM, 0, rank, ctx, v) for rank, (ctx, v) in enumerate(s.random)]
        for kind, bucket, rank, ctx, value in entries:
            active = x[ctx].nonzero().flatten()
            contributions = W[active, u] * x[ctx, active]
            max_pos = int(contributions.argmax())
            if kind == Example.Kind.TOP and rank == 0:
                top_tokens[u] = f"f{int(active[max_pos])}"
            values = contributions.clamp(-65504, 65504).numpy().astype("<f2").tobytes()
            yield units[u], int(kind), bucket, rank, context_ids[ctx], value, max_pos, values
