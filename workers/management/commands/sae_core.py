from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.corpora.models import Corpus
from workers.compute.loading import ModelLoadError
from workers.pipeline.models import model_get_or_register
from workers.pipeline.sae_core import hook_core
from workers.pipeline.saes import SaeInputError


class Command(BaseCommand):
    help = (
        "Measure every SAE on one hook on the same held-out tokens of a corpus (SAEBench core metrics: FVU, L0, "
        "dead and dense fractions, firing-density histogram, decoder cosine structure; loss recovered for causal "
        "LMs); stored in each SAE's quality and set side by side on the hook's source pages."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True)
        parser.add_argument("--hook", required=True, help="e.g. blocks.3.mlp.hook_post")
        parser.add_argument("--corpus", required=True, help="an imported corpus tokenized for the model")
        parser.add_argument("--tokens", type=int, default=8192, help="held-out tokens measured")

    def handle(self, *args: Any, **opts: Any) -> None:
        corpus = Corpus.objects.select_related("tokenizer").filter(name=opts["corpus"], status=Corpus.Status.READY).first()
        if corpus is None:
            raise CommandError(f"no ready corpus named {opts['corpus']!r}")
        if not 1 <= opts["tokens"] <= 65_536:
            raise CommandError("--tokens must be in 1..65536")
        try:
            results = hook_core(model=model_get_or_register(opts["model"]), hook=opts["hook"], corpus=corpus,
                                max_tokens=opts["tokens"])
        except (ModelLoadError, SaeInputError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        for name, c in results.items():
            extra = f", loss recovered {c['loss_recovered']:.3f}" if "loss_recovered" in c else ""
            self.stdout.write(f"{name}: FVU {c['fvu']:.3f}, L0 {c['l0']:.1f}, dead {c['dead_fraction']:.3f}, dense "
                              f"{c['dense_fraction']:.3f}, mean max cosine {c['mean_max_cosine']:.3f}{extra}\n")
