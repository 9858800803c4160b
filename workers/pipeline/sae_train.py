"""Training an SAE on a model's activations over a corpus, as a job: activations are streamed
from the model (stopped after the hook's layer) through the trainer's shuffle buffer; quality is
measured on held-out contexts at the end of the corpus; the SAE is registered in the catalog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Model, Sae, Source
from browser.corpora.models import Corpus
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.compute import hooks, loading
from workers.compute.sae import quality
from workers.compute.sae.train import TrainConfig, train
from workers.pipeline.sae_activations import EVAL_CONTEXTS, _Activations, _context_batches
from workers.pipeline.saes import SaeInputError, expected_d_in, sae_register


def sae_train_create(*, model: Model, corpus: Corpus, hook: str, name: str, config: TrainConfig,
                     device: str = "auto", user: Any = None, transcoder: bool = False, skip: bool = False) -> Job:
    """Check the request and create the training job (its task is queued by the caller); with
    ``transcoder`` the job trains a TopK transcoder (``skip``: with a linear skip term) on the MLP whose
    input ``hook`` (blocks.L.mlp.hook_in) is."""
    if corpus.status != Corpus.Status.READY or corpus.n_contexts < 2:
        raise SaeInputError(f"corpus {corpus.name!r} is not ready or has fewer than 2 contexts")
    if corpus.tokenizer_id != model.tokenizer_id:
        raise SaeInputError(f"corpus {corpus.name!r} was not tokenized for {model.name}")
    try:
        expected_d_in(model, hook)
    except hooks.HookError as exc:
        raise SaeInputError(str(exc)) from None
    if Source.objects.filter(model=model, name=name).exists():
        raise SaeInputError(f"{model.name} already has a source named {name!r}")
    if not (device in {"auto", "cpu", "cuda"} or device.startswith("cuda:")):
        raise SaeInputError(f"device must be auto, cpu or cuda[:N] (got {device!r})")
    params: dict[str, Any] = {"model_id": model.pk, "corpus_id": corpus.pk, "hook": hook, "name": name,
                              "device": device, "train": config.to_dict()}
    if transcoder:
        from workers.pipeline.transcoder_train import transcoder_hook_check

        transcoder_hook_check(model, hook, config)
        params["transcoder"] = {"skip": skip}
    elif skip:
        raise SaeInputError("only a transcoder has a skip connection")
    what = "transcoder" if transcoder else "SAE"
    return job_create(kind=Job.Kind.TRAIN_SAE, title=f"train {what} {name} on {model.name} {hook}",
                      params=params, created_by=user)


def sae_train_work(job: Job, progress: Callable[..., None]) -> None:
    """The job's work: train, measure, register (skipped if the SAE was registered already)."""
    p = job.params
    model = Model.objects.get(pk=p["model_id"])
    corpus = Corpus.objects.select_related("tokenizer").get(pk=p["corpus_id"])
    if Sae.objects.filter(source__model=model, source__name=p["name"]).exists():
        return  # a repeated delivery of a job that finished its work
    config = TrainConfig(**p["train"])
    device = ("cuda" if torch.cuda.is_available() else "cpu") if p["device"] == "auto" else p["device"]
    arch = hooks.architecture_for(model.config.get("model_type", model.architecture))
    torch_model = loading.load_torch_model(model.location, Path(settings.CACHE_DIR), arch.causal, device, "float32")
    tok = loading.load_tokenizer(model.location, Path(settings.CACHE_DIR))
    pad = int(tok.pad_token_id) if tok.pad_token_id is not None else 0
    acts = _Activations(model, torch_model, arch, p["hook"], corpus, set(corpus.tokenizer.special_ids), pad)
    n_eval = max(1, min(EVAL_CONTEXTS, corpus.n_contexts // 10))
    train_range, eval_range = range(0, corpus.n_contexts - n_eval), range(corpus.n_contexts - n_eval, corpus.n_contexts)
    if p.get("transcoder") is not None:
        from workers.pipeline.transcoder_train import transcoder_train_work

        transcoder_train_work(job, model, corpus, acts, config, (train_range, eval_range), device, progress)
        return
    result = train(acts.forever(train_range), expected_d_in(model, p["hook"]), config, device,
                   progress=lambda step, total: progress(step, total, "training"), hook_name=p["hook"])
    sae = result.sae.with_config(model_name=model.name)
    progress(config.steps, config.steps, "measuring on held-out contexts", force=True)
    stats = _quality(sae, acts, eval_range, arch.causal)
    sae_register(model=model, name=p["name"], sae=sae, quality_stats=stats, loss_curve=result.loss_curve,
                 extra={"training": config.to_dict(), "corpus": corpus.name, "input_scale": result.scale,
                        "held_out_contexts": [eval_range.start, eval_range.stop]})


def _quality(sae: Any, acts: _Activations, eval_range: range, causal: bool) -> dict[str, float]:
    on_device = sae.to(acts.device)
    stats = quality.reconstruction_quality(on_device, acts.once(eval_range))
    if causal:
        batches = ((b.ids.to(acts.device), b.attention_mask.to(acts.device))
                   for b in _context_batches(acts.corpus, eval_range, acts.special, acts.pad))
        stats.update(quality.loss_recovered(acts.torch_model, acts.arch, acts.model.n_layers, acts.hook,
                                            on_device, batches))
    return stats
