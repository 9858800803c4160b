from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Sae, Source
from browser.corpora.models import Corpus
from browser.runs.models import Job
from workers.cli import submit
from workers.compute.loading import ModelLoadError
from workers.compute.sae.train import ARCHITECTURES, TOPK_LIKE, TrainConfig
from workers.pipeline.models import model_get_or_register
from workers.pipeline.sae_train import sae_train_create
from workers.tasks import train_sae, train_sae_work


class Command(BaseCommand):
    help = (
        "Train an SAE (TopK or BatchTopK with AuxK, ReLU with L1, JumpReLU with L0, Matryoshka BatchTopK) on a model's activations at one hook point over a "
        "corpus, as a job on the gpu queue; quality is measured on held-out contexts and the SAE is "
        "registered as a source (weights in PostgreSQL). With --transcoder: a TopK transcoder that reads the MLP "
        "input at --hook blocks.L.mlp.hook_in and predicts that MLP's output (held-out FVU of the output and L0), "
        "registered as a source of kind transcoder."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="a registered model or packaged alias")
        parser.add_argument("--corpus", required=True, help="the name of an imported corpus")
        parser.add_argument("--hook", required=True, help="e.g. blocks.3.mlp.hook_post (a transcoder: blocks.3.mlp.hook_in)")
        parser.add_argument("--transcoder", action="store_true",
                            help="train a TopK transcoder: MLP input (--hook blocks.L.mlp.hook_in) -> MLP output")
        parser.add_argument("--skip", action="store_true", help="give the transcoder a linear skip term x @ W_skip.T")
        parser.add_argument("--name", default="", help="the SAE source's name (default: derived from the options)")
        parser.add_argument("--architecture", default="topk", choices=list(ARCHITECTURES))
        parser.add_argument("--width", type=int, default=4096, help="number of latents")
        parser.add_argument("--k", type=int, default=32, help="active latents per token (topk)")
        parser.add_argument("--l1", type=float, default=5.0, help="L1 coefficient (relu)")
        parser.add_argument("--l0-coefficient", type=float, default=0.01, help="L0 coefficient (jumprelu)")
        parser.add_argument("--steps", type=int, default=2000)
        parser.add_argument("--batch-tokens", type=int, default=1024)
        parser.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(width / 16384)")
        parser.add_argument("--buffer-tokens", type=int, default=16384)
        parser.add_argument("--reuse", type=int, default=1, help="times each buffer fill is used")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until the job is done")
        parser.add_argument("--inline", action="store_true", help="train in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            job = self._create(opts)
        except (ModelLoadError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        job = submit(train_sae, train_sae_work, job, wait=opts["wait"], inline=opts["inline"],
                     stdout=self.stdout)  # type: ignore[arg-type]
        if job.status == Job.Status.SUCCEEDED:
            row = Sae.objects.get(source__model_id=job.params["model_id"], source__name=job.params["name"])
            q = row.quality
            summary = ", ".join(f"{key} {value:.4g}" for key, value in q.items() if isinstance(value, float))
            what = "transcoder" if row.source.kind == Source.Kind.TRANSCODER else "SAE"
            self.stdout.write(f"Trained {what} {row.source.name}: {summary}.\n")

    def _create(self, opts: dict[str, Any]) -> Job:
        model = model_get_or_register(opts["model"])
        corpus = Corpus.objects.filter(name=opts["corpus"]).first()
        if corpus is None:
            names = ", ".join(Corpus.objects.values_list("name", flat=True)) or "none"
            raise ValueError(f"no corpus named {opts['corpus']!r} (imported: {names})")
        config = TrainConfig(architecture=opts["architecture"], d_sae=opts["width"], k=opts["k"],
                             l1_coefficient=opts["l1"], l0_coefficient=opts["l0_coefficient"], steps=opts["steps"], batch_tokens=opts["batch_tokens"],
                             lr=opts["lr"], buffer_tokens=opts["buffer_tokens"], reuse=opts["reuse"],
                             seed=opts["seed"])
        name = opts["name"] or _default_name(opts["hook"], config, opts["transcoder"], opts["skip"])
        return sae_train_create(model=model, corpus=corpus, hook=opts["hook"], name=name, config=config,
                                device=opts["device"], transcoder=opts["transcoder"], skip=opts["skip"])


def _default_name(hook: str, config: TrainConfig, transcoder: bool = False, skip: bool = False) -> str:
    if transcoder:
        return f"{hook}.transcoder{'-skip' if skip else ''}-{config.d_sae}-k{config.k}"
    sparsity = (f"k{config.k}" if config.architecture in TOPK_LIKE else f"l1-{config.l1_coefficient:g}"
                if config.architecture == "relu" else f"l0-{config.l0_coefficient:g}")
    return f"{hook}.sae-{config.architecture}-{config.d_sae}-{sparsity}"
