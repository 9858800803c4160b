"""Training a transcoder on a model's MLP over a corpus, as the SAE training job does it: the model runs
(stopped at the layer's down projection) over the training contexts; each valid token gives the MLP's
input (``mlp.hook_in``) and output (the down projection applied to ``mlp.hook_post``); quality (FVU of
the MLP output, L0) is measured on held-out contexts at the end of the corpus; the transcoder is
registered as a source of kind transcoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.runs.models import Job
from workers.compute import hooks
from workers.compute.harvest import TokenBatch
from workers.compute.sae.train import TrainConfig
from workers.compute.sae.transcoder_train import check_config, train_transcoder, transcoder_quality
from workers.pipeline.sae_activations import _Activations
from workers.pipeline.saes import SaeInputError, sae_register


def transcoder_hook_check(model: Model, hook: str, config: TrainConfig) -> int:
    """The layer of a transcoder's hook (blocks.L.mlp.hook_in); a clear error for anything else."""
    try:
        layer, kind = hooks.parse_hook(hook, model.n_layers)
        check_config(config)
    except (hooks.HookError, ValueError) as exc:
        raise SaeInputError(str(exc)) from None
    if kind != "mlp.hook_in":
        raise SaeInputError(f"a transcoder reads an MLP's input: give --hook blocks.{layer}.mlp.hook_in (got {hook})")
    return layer


class _MlpPairs(_Activations):
    """[n, 2 d_model] chunks: each valid token's MLP input, then its MLP output."""

    def of(self, batch: TokenBatch) -> torch.Tensor:
        layer, _ = hooks.parse_hook(self.hook, self.model.n_layers)
        post = f"blocks.{layer}.mlp.hook_post"
        captured: dict[str, torch.Tensor] = {}
        with hooks.capture(self.torch_model, self.arch, [self.hook, post], self.model.n_layers, captured.__setitem__):
            hooks.forward(self.torch_model, batch.ids.to(self.device), batch.attention_mask.to(self.device))
        valid = ~batch.invalid.to(self.device)
        with torch.inference_mode():
            out = self.arch.mlp_out(self.arch.layers(self.torch_model)[layer])(captured[post][valid])
        return torch.cat([captured[self.hook][valid].float(), out.float()], dim=-1)


def transcoder_train_work(job: Job, model: Model, corpus: Corpus, acts: _Activations, config: TrainConfig,
                          ranges: tuple[range, range], device: str, progress: Callable[..., None]) -> None:
    """Train, measure on the held-out range, register (``acts`` gives the loaded model and corpus)."""
    p = job.params
    transcoder_hook_check(model, p["hook"], config)
    pairs = _MlpPairs(model, acts.torch_model, acts.arch, p["hook"], corpus, acts.special, acts.pad)
    train_range, eval_range = ranges
    result = train_transcoder(pairs.forever(train_range), model.d_model, model.d_model, config,
                              skip=bool(p["transcoder"].get("skip")), device=device, hook_name=p["hook"],
                              progress=lambda step, total: progress(step, total, "training"))
    layer, _ = hooks.parse_hook(p["hook"], model.n_layers)
    transcoder = result.transcoder.with_config(model_name=model.name, hook_name_out=f"blocks.{layer}.hook_mlp_out")
    progress(config.steps, config.steps, "measuring on held-out contexts", force=True)
    stats = transcoder_quality(transcoder.to(pairs.device), pairs.once(eval_range))
    extra: dict[str, Any] = {"training": config.to_dict(), "corpus": corpus.name, "input_scale": result.scales[0],
                             "output_scale": result.scales[1], "held_out_contexts": [eval_range.start, eval_range.stop]}
    sae_register(model=model, name=p["name"], sae=transcoder.cpu(), quality_stats=stats,
                 loss_curve=result.loss_curve, extra=extra)
