from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.runs.models import Job
from workers.cli import submit
from workers.compute.loading import ModelLoadError
from workers.pipeline.models import model_get_or_register
from workers.pipeline.sweeps import SweepConfig, best_by, sweep_create, sweep_results
from workers.tasks_groundtruth import sae_sweep, sae_sweep_work


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


class Command(BaseCommand):
    help = (
        "Train SAEs over architectures x widths x sparsities on a synthetic set (recovery of its true "
        "features: MCC, MMCS, F1, splits, absorption) or on a real model's hook (FVU, L0, dead/dense, loss "
        "recovered), as one job on the gpu queue; each SAE is registered, and the source page plots the sweep."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--synthetic", help="a registered synthetic set (manage.py synthetic_set)")
        where.add_argument("--model", help="a registered model or packaged alias (with --hook and --corpus)")
        parser.add_argument("--hook", default="", help="e.g. blocks.3.mlp.hook_post (real models)")
        parser.add_argument("--corpus", default="", help="an imported corpus (real models)")
        parser.add_argument("--architectures", default="topk,batchtopk,relu,jumprelu,matryoshka")
        parser.add_argument("--widths", default="256", help="comma-separated numbers of latents")
        parser.add_argument("--sparsities", default="2,4,8", help="k values for topk, batchtopk and matryoshka")
        parser.add_argument("--l1", default="0.3,1,3", help="L1 coefficients for relu")
        parser.add_argument("--l0", default="0.003,0.01,0.03", help="L0 coefficients for jumprelu")
        parser.add_argument("--steps", type=int, default=1000)
        parser.add_argument("--batch-tokens", type=int, default=512)
        parser.add_argument("--lr", type=float, default=3e-3)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--match-true-l0", action="store_true",
                            help="synthetic sets: move ReLU and JumpReLU SAEs to the set's true L0 after training")
        parser.add_argument("--wait", action="store_true", help="show a progress bar until the job is done")
        parser.add_argument("--inline", action="store_true", help="train in this process")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            job = self._create(opts)
        except (ModelLoadError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        job = submit(sae_sweep, sae_sweep_work, job, wait=opts["wait"], inline=opts["inline"], stdout=self.stdout)  # type: ignore[arg-type]
        if job.status != Job.Status.SUCCEEDED:
            return
        results = sweep_results(Model.objects.get(pk=job.params["model_id"]), job.pk)
        metric = "f1" if "f1" in (results[0] if results else {}) else "fvu"
        for row in results:
            self.stdout.write(f"{row['name']}: " + ", ".join(
                f"{k} {row[k]:.4g}" for k in ("mcc", "mmcs", "f1", "fvu", "l0", "dead_fraction", "loss_recovered")
                if isinstance(row.get(k), float)) + "\n")
        if metric == "f1":
            for arch, row in best_by(results, "f1").items():
                self.stdout.write(f"best {arch} by F1: sparsity {row['sparsity']:g} (F1 {row['f1']:.3f}, L0 {row['l0']:.2f})\n")

    def _create(self, opts: dict[str, Any]) -> Job:
        config = SweepConfig(architectures=tuple(a.strip() for a in opts["architectures"].split(",") if a.strip()),
                             widths=tuple(int(w) for w in _floats(opts["widths"])), sparsities=_floats(opts["sparsities"]),
                             l1_coefficients=_floats(opts["l1"]), l0_coefficients=_floats(opts["l0"]),
                             steps=opts["steps"], batch_tokens=opts["batch_tokens"], lr=opts["lr"], seed=opts["seed"],
                             match_true_l0=opts["match_true_l0"])
        if opts["synthetic"]:
            model = Model.objects.filter(name=opts["synthetic"], kind=Model.Kind.SYNTHETIC).first()
            if model is None:
                raise ValueError(f"no synthetic set named {opts['synthetic']!r} (register one with synthetic_set)")
            return sweep_create(model=model, config=config)
        corpus = Corpus.objects.filter(name=opts["corpus"]).first()
        if corpus is None or not opts["hook"]:
            raise ValueError("a sweep on a real model needs --hook and an imported --corpus")
        return sweep_create(model=model_get_or_register(opts["model"]), config=config, hook=opts["hook"],
                            corpus_id=corpus.pk)
