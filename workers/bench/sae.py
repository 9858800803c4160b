"""`bench sae`: SAE training throughput and quality after a fixed budget on MiniLM's layer 3 MLP,
and the harvest of the neurons plus a 16,384-feature SAE against a bare forward pass + encode.

The quality is measured on held-out contexts cut from the shared Shakespeare corpus's last scenes,
which training (its first scenes) never sees. Without that corpus the bench stops with an error:
the fixture slice is too short to hold out anything training has not seen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from fixtures.tiny_sae import random_sae
from workers.bench import timing
from workers.bench.harvest import BATCH, CONTEXT_LENGTH, MODEL, make_batches
from workers.compute import hooks, loading, tokenize
from workers.compute.harvest import SourceRuntime, TokenBatch, harvest_pass, make_batch
from workers.compute.sae.model import SparseAutoencoder
from workers.compute.sae.quality import reconstruction_quality
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.sae.train import TrainConfig, train
from workers.compute.stats import UnitAccumulator

HOOK = "blocks.3.mlp.hook_post"
N_LAYERS = 6
D_MLP = 1536
HELD_OUT_TOKENS = 4096

HELP = "SAE training tokens/s, FVU and L0 after a fixed budget; harvest with a 16k-feature SAE vs forward + encode"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--train-tokens", type=int, default=24_576, help="activations collected for training")
    parser.add_argument("--steps", type=int, default=150, help="training steps (batches of 1024 tokens)")
    parser.add_argument("--width", type=int, default=4096, help="latents of the trained SAE")
    parser.add_argument("--harvest-tokens", type=int, default=8192, help="tokens per timed harvest pass")
    parser.add_argument("--harvest-width", type=int, default=16_384, help="latents of the harvested SAE")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if opts["train_tokens"] < 4096 or opts["harvest_tokens"] < 1024 or opts["steps"] < 1:
        raise ValueError("--train-tokens must be at least 4096, --harvest-tokens at least 1024, --steps positive")
    corpus = shared_corpus()  # before anything slow
    model = loading.load_torch_model(MODEL, Path(settings.CACHE_DIR), False, "cpu", "float32")
    arch = hooks.architecture_for("bert")
    result = {"model": MODEL, "hook": HOOK, "threads": torch.get_num_threads()}
    result.update(bench_training(model, arch, corpus, opts, log))
    result.update(bench_harvest(model, arch, opts, log))
    return result


def shared_corpus() -> Path:
    """The shared Shakespeare corpus (706 scenes); a ValueError naming it when it is missing."""
    path = Path(settings.BASE_DIR).parent / "shared" / "corpora" / "shakespeare.jsonl"
    if not path.is_file():
        raise ValueError(f"bench sae needs the shared corpus {path}: its held-out FVU must come from scenes "
                         "that training never saw, and the fixture slice is too short for that")
    return path


def _contexts(tok: Any, layout: Any, texts: list[str], n_tokens: int) -> tuple[list[list[int]], int]:
    """Full contexts from ``texts`` in order until ``n_tokens``; and how many texts that took."""
    contexts: list[list[int]] = []
    for start in range(0, len(texts), 16):
        for used, ids in enumerate(tokenize.tokenize_batch(tok, texts[start : start + 16]), start=start + 1):
            contexts.extend(c for c in tokenize.chunk(ids, layout) if len(c) == CONTEXT_LENGTH)
            if len(contexts) * CONTEXT_LENGTH >= n_tokens:
                return contexts[: n_tokens // CONTEXT_LENGTH], used
    raise ValueError(f"the corpus holds fewer than {n_tokens} tokens of full contexts")


def split_batches(path: Path, train_tokens: int, held_tokens: int) -> tuple[list[TokenBatch], list[TokenBatch]]:
    """Training batches from the corpus's first scenes, held-out batches from its last scenes; a
    ValueError if the two would share a scene."""
    tok = loading.load_tokenizer(MODEL, Path(settings.CACHE_DIR))
    layout = tokenize.layout_for(tok, CONTEXT_LENGTH, causal=False)
    texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    train_contexts, n_train = _contexts(tok, layout, texts, train_tokens)
    held_contexts, n_held = _contexts(tok, layout, texts[::-1], held_tokens)
    if n_train + n_held > len(texts):
        raise ValueError(f"{path} is too short: {n_train} scenes for training and {n_held} held out overlap")
    special = set(tok.all_special_ids)

    def batches(contexts: list[list[int]]) -> list[TokenBatch]:
        return [make_batch(list(range(i, i + len(contexts[i : i + BATCH]))), contexts[i : i + BATCH],
                           CONTEXT_LENGTH, special, True, tok.pad_token_id) for i in range(0, len(contexts), BATCH)]

    return batches(train_contexts), batches(held_contexts)


def activations(model: Any, arch: hooks.Architecture, batches: list[TokenBatch]) -> torch.Tensor:
    """[n, d_mlp] activations of the valid tokens of the batches."""
    out = []
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, [HOOK], N_LAYERS, captured.__setitem__):
        for batch in batches:
            hooks.forward(model, batch.ids, batch.attention_mask)
            out.append(captured[HOOK][~batch.invalid].clone())
    return torch.cat(out)


def bench_training(model: Any, arch: hooks.Architecture, corpus: Path, opts: dict[str, Any],
                   log: Any) -> dict[str, Any]:
    """Train on precomputed activations (reused over epochs), so the figure is the trainer's own
    throughput; activation collection is reported separately. Quality on held-out scenes."""
    train_batches, held_batches = split_batches(corpus, opts["train_tokens"], HELD_OUT_TOKENS)
    start = time.perf_counter()
    train_acts = activations(model, arch, train_batches)
    collect_s = time.perf_counter() - start
    held_out = activations(model, arch, held_batches)
    config = TrainConfig(architecture="topk", d_sae=opts["width"], k=32, steps=opts["steps"], batch_tokens=1024,
                         buffer_tokens=min(16_384, train_acts.shape[0]), dead_after_tokens=50_000)
    chunks = (train_acts[i : i + 2048] for _ in range(1000) for i in range(0, train_acts.shape[0], 2048))
    log.write(f"training a {opts['width']}-latent TopK SAE for {opts['steps']} steps...\n")
    start = time.perf_counter()
    trained = train(chunks, D_MLP, config)
    train_s = time.perf_counter() - start
    q = reconstruction_quality(trained.sae, held_out.split(1024))
    return {"train_width": opts["width"], "train_k": 32, "train_steps": opts["steps"], "train_batch_tokens": 1024,
            "train_tokens_per_s": round(opts["steps"] * 1024 / train_s, 1),
            "activation_tokens_per_s": round(train_acts.shape[0] / collect_s, 1),
            "fvu": round(q["fvu"], 4), "l0": round(q["l0"], 2), "dead_fraction": round(q["dead_fraction"], 4),
            "held_out_tokens": int(q["tokens"])}


def forward_encoder(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder) -> Callable[[TokenBatch], None]:
    """The same model, batch and stop layer, with a hook that only encodes."""
    def encode_only(hook: str, acts: torch.Tensor) -> None:
        sae.encode(acts)

    def run(batch: TokenBatch) -> None:
        with hooks.capture(model, arch, [HOOK], N_LAYERS, encode_only):
            hooks.forward(model, batch.ids, batch.attention_mask)

    return run


def sae_harvester(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder) -> Callable[[TokenBatch], None]:
    """Harvests one batch at a time (the layer's neurons and the SAE's latents) into accumulators
    that live across the calls, as in a run."""
    runtimes = [SourceRuntime(HOOK, HOOK, D_MLP, 0),
                SourceRuntime("sae", HOOK, sae.cfg.d_sae, 1 << 21, sae.encode, sparse=True,
                              encode_top=sae.encode_top)]
    accumulators = {rt.name: (SparseUnitAccumulator if rt.sparse else UnitAccumulator)(
        rt.n_units, k=32, samples=6, hist_stride=7, seed=0, unit_offset=rt.unit_offset, n_intervals=6)
        for rt in runtimes}
    return lambda batch: harvest_pass(model, arch, N_LAYERS, runtimes, accumulators, [batch], CONTEXT_LENGTH)


def bench_harvest(model: Any, arch: hooks.Architecture, opts: dict[str, Any], log: Any) -> dict[str, Any]:
    """Per batch, side by side (timing.paired): a forward pass that only encodes, and the harvest."""
    sae = random_sae(D_MLP, opts["harvest_width"], architecture="topk", k=32, seed=0, hook_name=HOOK)
    batches = make_batches(opts["harvest_tokens"])
    n = sum(int(b.attention_mask.sum()) for b in batches)
    forward_encoder(model, arch, sae)(batches[0])  # warm up
    sae_harvester(model, arch, sae)(batches[0])
    results = []
    for r in range(opts["rounds"]):
        results.append(timing.paired(batches, forward_encoder(model, arch, sae), sae_harvester(model, arch, sae)))
        log.write(f"round {r + 1}: forward+encode {n / results[-1].a_wall:.0f} tok/s, harvest "
                  f"{n / results[-1].b_wall:.0f} tok/s, ratio {results[-1].ratio:.3f}\n")
    measured = timing.Rounds(results)
    forward_tps, harvest_tps = measured.tokens_per_s(n)
    return {"harvest_width": opts["harvest_width"], "harvest_tokens": n,
            "forward_encode_tokens_per_s": round(forward_tps, 1), "harvest_tokens_per_s": round(harvest_tps, 1),
            # The median of the rounds' ratios, each from batches timed side by side.
            "harvest_vs_forward_encode": round(measured.ratio, 3),
            "harvest_vs_forward_encode_per_round": measured.per_round(),
            "harvest_vs_forward_encode_cpu": round(measured.cpu_ratio, 3)}
