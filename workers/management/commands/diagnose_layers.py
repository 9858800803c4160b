from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.corpora.models import Corpus
from workers.compute.loading import ModelLoadError
from workers.pipeline.layer_diagnosis import layer_sae, neuron_hook, sae_diagnose
from workers.pipeline.models import model_get_or_register
from workers.pipeline.saes import SaeInputError


def parse_layers(text: str, n_layers: int) -> list[int]:
    """"0-5", "0,4,8" or "all" -> sorted layer indices (each checked against the model)."""
    if text == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, _, high = part.partition("-")
        try:
            span = range(int(low), int(high or low) + 1)
        except ValueError:
            raise ValueError(f"bad layer list {text!r}: use 0-5, 0,4,8 or all") from None
        layers.update(span)
    if not layers or min(layers) < 0 or max(layers) >= n_layers:
        raise ValueError(f"layers must be in 0..{n_layers - 1} (got {text!r})")
    return sorted(layers)


class Command(BaseCommand):
    help = (
        "Name why each MLP neuron of a model's layers is polysemantic (superposition, rotation, non-linear, "
        "compositional, or monosemantic) with the SAE on that layer's neurons (blocks.L.mlp.hook_post; the newest "
        "registered one), over the corpus's held-out contexts; stored in the SAE's quality and shown per layer on "
        "the model's source pages. With --train-missing, a layer without an SAE gets a small TopK one first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, help="a registered model or packaged alias")
        parser.add_argument("--corpus", required=True, help="an imported corpus tokenized for the model")
        parser.add_argument("--layers", default="all", help="0-5, 0,4,8 or all")
        parser.add_argument("--tokens", type=int, default=8192, help="held-out tokens diagnosed per layer")
        parser.add_argument("--train-missing", action="store_true", help="train an SAE where a layer has none")
        parser.add_argument("--width", type=int, default=2048, help="latents of a trained SAE")
        parser.add_argument("--k", type=int, default=32, help="k of a trained SAE")
        parser.add_argument("--steps", type=int, default=300, help="steps of a trained SAE (512 tokens each)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            model = model_get_or_register(opts["model"])
            layers = parse_layers(opts["layers"], model.n_layers)
        except (ModelLoadError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        corpus = Corpus.objects.select_related("tokenizer").filter(name=opts["corpus"]).first()
        if corpus is None or corpus.status != Corpus.Status.READY:
            raise CommandError(f"no ready corpus named {opts['corpus']!r}")
        if not 1 <= opts["tokens"] <= 65_536:
            raise CommandError("--tokens must be in 1..65536")
        for layer in layers:
            row = layer_sae(model, layer)
            if row is None and opts["train_missing"]:
                call_command("train_sae", model=model.name, corpus=corpus.name, hook=neuron_hook(layer),
                             width=opts["width"], k=opts["k"], steps=opts["steps"], batch_tokens=512,
                             buffer_tokens=8192, reuse=4, inline=True, stdout=self.stdout)
                row = layer_sae(model, layer)
            if row is None:
                self.stdout.write(f"layer {layer}: no SAE on {neuron_hook(layer)} (use --train-missing)\n")
                continue
            try:
                s = sae_diagnose(sae_row=row, corpus=corpus, max_tokens=opts["tokens"])
            except SaeInputError as exc:
                raise CommandError(str(exc)) from None
            causes = ", ".join(f"{c} {n}" for c, n in sorted(s["causes"].items(), key=lambda cn: -cn[1]))
            self.stdout.write(f"layer {layer} ({row.source.name}): {causes}; live features {s['live_features']} "
                              f"in {s['dims']} dims, interference {s['interference']:.3f}\n")
