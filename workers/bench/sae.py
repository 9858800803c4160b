"""`bench sae`: SAE training throughput and quality after a fixed budget on MiniLM's layer 3 MLP,
and the harvest of the neurons plus a 16,384-feature SAE against a bare forward pass + encode."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from fixtures.tiny_sae import random_sae
from workers.bench.harvest import CONTEXT_LENGTH, MODEL, make_batches
from workers.compute import hooks, loading
from workers.compute.harvest import SourceRuntime, TokenBatch, harvest_pass
from workers.compute.sae.model import SparseAutoencoder
from workers.compute.sae.quality import reconstruction_quality
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.sae.train import TrainConfig, train
from workers.compute.stats import UnitAccumulator

HOOK = "blocks.3.mlp.hook_post"
N_LAYERS = 6
D_MLP = 1536

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
    model = loading.load_torch_model(MODEL, Path(settings.CACHE_DIR), False, "cpu", "float32")
    arch = hooks.architecture_for("bert")
    result = {"model": MODEL, "hook": HOOK, "threads": torch.get_num_threads()}
    result.update(bench_training(model, arch, opts, log))
    result.update(bench_harvest(model, arch, opts, log))
    return result


def activations(model: Any, arch: hooks.Architecture, batches: list[TokenBatch]) -> torch.Tensor:
    """[n, d_mlp] activations of the valid tokens of the batches."""
    out = []
    captured: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, [HOOK], N_LAYERS, captured.__setitem__):
        for batch in batches:
            hooks.forward(model, batch.ids, batch.attention_mask)
            out.append(captured[HOOK][~batch.invalid].clone())
    return torch.cat(out)


def bench_training(model: Any, arch: hooks.Architecture, opts: dict[str, Any], log: Any) -> dict[str, Any]:
    """Train on precomputed activations (reused over epochs), so the figure is the trainer's own
    throughput; activation collection is reported separately."""
    start = time.perf_counter()
    acts = activations(model, arch, make_batches(opts["train_tokens"] + 4096))
    collect_s = time.perf_counter() - start
    held_out, train_acts = acts[-4096:], acts[:-4096]
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
            "activation_tokens_per_s": round(acts.shape[0] / collect_s, 1),
            "fvu": round(q["fvu"], 4), "l0": round(q["l0"], 2), "dead_fraction": round(q["dead_fraction"], 4),
            "held_out_tokens": int(q["tokens"])}


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the
    steadier measure of the work done."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_encode_pass(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder,
                        batches: list[TokenBatch]) -> tuple[float, float]:
    """The same model, batches and stop layer, with a hook that only encodes."""
    def encode_only(hook: str, acts: torch.Tensor) -> None:
        sae.encode(acts)

    def run() -> None:
        with hooks.capture(model, arch, [HOOK], N_LAYERS, encode_only):
            for batch in batches:
                hooks.forward(model, batch.ids, batch.attention_mask)

    return _timed(run)


def harvest_with_sae(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder,
                     batches: list[TokenBatch]) -> tuple[float, float]:
    runtimes = [SourceRuntime(HOOK, HOOK, D_MLP, 0),
                SourceRuntime("sae", HOOK, sae.cfg.d_sae, 1 << 21, sae.encode, sparse=True)]
    accumulators = {rt.name: (SparseUnitAccumulator if rt.sparse else UnitAccumulator)(
        rt.n_units, k=32, samples=6, hist_stride=7, seed=0, unit_offset=rt.unit_offset) for rt in runtimes}
    return _timed(lambda: harvest_pass(model, arch, N_LAYERS, runtimes, accumulators, batches, CONTEXT_LENGTH))


def bench_harvest(model: Any, arch: hooks.Architecture, opts: dict[str, Any], log: Any) -> dict[str, Any]:
    sae = random_sae(D_MLP, opts["harvest_width"], architecture="topk", k=32, seed=0, hook_name=HOOK)
    batches = make_batches(opts["harvest_tokens"])
    n = sum(int(b.attention_mask.sum()) for b in batches)
    forward_encode_pass(model, arch, sae, batches[:1])  # warm up
    bare, harvest = [], []
    for r in range(opts["rounds"]):  # interleaved, so both see the same machine
        bare.append(forward_encode_pass(model, arch, sae, batches))
        harvest.append(harvest_with_sae(model, arch, sae, batches))
        log.write(f"round {r + 1}: forward+encode {n / bare[-1][0]:.0f} tok/s, harvest {n / harvest[-1][0]:.0f} tok/s "
                  f"(CPU time {bare[-1][1]:.1f} s vs {harvest[-1][1]:.1f} s)\n")
    per_round = [b[0] / h[0] for b, h in zip(bare, harvest, strict=True)]
    return {"harvest_width": opts["harvest_width"], "harvest_tokens": n,
            "forward_encode_tokens_per_s": round(n / min(b[0] for b in bare), 1),
            "harvest_tokens_per_s": round(n / min(h[0] for h in harvest), 1),
            # The median of the rounds' ratios: each round times both passes back to back, so a
            # burst of load from other processes spoils one round, not the figure.
            "harvest_vs_forward_encode": round(statistics.median(per_round), 3),
            "harvest_vs_forward_encode_per_round": [round(r, 3) for r in per_round],
            "harvest_vs_forward_encode_cpu": round(statistics.median(b[1] / h[1] for b, h in zip(bare, harvest,
                                                                                                  strict=True)), 3)}
