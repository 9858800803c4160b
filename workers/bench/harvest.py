"""`bench harvest`: harvest speed against a bare forward pass, memory, and COPY throughput."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.db import connection, transaction

from workers.bench import timing
from workers.compute import hooks, loading, tokenize
from workers.compute.harvest import SourceRuntime, TokenBatch, harvest_pass, make_batch
from workers.compute.stats import UnitAccumulator
from workers.pipeline.loader import device_for

MODEL = "minilm-l6"
CONTEXT_LENGTH = 64
BATCH = 32


def corpus_path() -> Path:
    shared = Path(settings.BASE_DIR).parent / "shared" / "corpora" / "shakespeare.jsonl"
    return shared if shared.exists() else Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"


@dataclass(frozen=True)
class Setup:
    """A model with every layer's ``mlp.hook_post`` hooked, on one device."""

    location: str
    device: str
    model: Any
    arch: hooks.Architecture
    n_layers: int
    runtimes: list[SourceRuntime]

    @property
    def names(self) -> list[str]:
        return [rt.hook for rt in self.runtimes]

    @property
    def n_units(self) -> int:
        return sum(rt.n_units for rt in self.runtimes)

    def sync(self) -> None:
        """Wait for the device, so that a timed call ends when its work does."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


def make_batches(n_tokens: int, location: str = MODEL) -> list[TokenBatch]:
    """Batches of full contexts cut from the Shakespeare corpus (repeated if it is short)."""
    tok = loading.load_tokenizer(location, Path(settings.CACHE_DIR))
    config = loading.load_config(location, Path(settings.CACHE_DIR))
    causal = hooks.architecture_for(config.model_type).causal
    layout = tokenize.layout_for(tok, CONTEXT_LENGTH, causal=causal)
    texts = [json.loads(line)["text"] for line in corpus_path().read_text().splitlines() if line.strip()]
    contexts: list[list[int]] = []
    while len(contexts) * CONTEXT_LENGTH < n_tokens:
        for ids in tokenize.tokenize_batch(tok, texts[:50]):
            contexts.extend(c for c in tokenize.chunk(ids, layout) if len(c) == CONTEXT_LENGTH)
            if len(contexts) * CONTEXT_LENGTH >= n_tokens:
                break
    special = set(tok.all_special_ids)
    n = n_tokens // CONTEXT_LENGTH
    return [make_batch(list(range(i, min(i + BATCH, n))), contexts[i : min(i + BATCH, n)], CONTEXT_LENGTH,
                       special, True, tok.pad_token_id) for i in range(0, n, BATCH)]


def _setup(location: str = MODEL, device: str = "cpu") -> Setup:
    cache = Path(settings.CACHE_DIR)
    config = loading.load_config(location, cache)
    arch = hooks.architecture_for(config.model_type)
    n_layers, _, d_mlp = hooks.dims(config, arch)
    model = loading.load_torch_model(location, cache, arch.causal, device, "float32")
    names = [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]
    runtimes = [SourceRuntime(n, n, d_mlp, i << 21) for i, n in enumerate(names)]
    return Setup(location, device, model, arch, n_layers, runtimes)


def bare_pass(setup: Setup, batches: list[TokenBatch]) -> float:
    """The same model, batches and stop layer, with hooks that do nothing."""
    start = time.perf_counter()
    with hooks.capture(setup.model, setup.arch, setup.names, setup.n_layers, lambda hook, acts: None):
        for batch in batches:
            ids, mask = batch.ids.to(setup.device), batch.attention_mask.to(setup.device)
            hooks.forward(setup.model, ids, mask)
    setup.sync()
    return time.perf_counter() - start


def _accumulators(setup: Setup, k: int = 32) -> dict[str, UnitAccumulator]:
    return {rt.name: UnitAccumulator(rt.n_units, k=k, samples=6, hist_stride=7, seed=0, unit_offset=rt.unit_offset,
                                     device=setup.device, n_intervals=6) for rt in setup.runtimes}


def _harvester(setup: Setup) -> Callable[[TokenBatch], None]:
    """Harvests one batch at a time into accumulators that live across the calls, as in a run."""
    accumulators = _accumulators(setup)

    def harvest(batch: TokenBatch) -> None:
        harvest_pass(setup.model, setup.arch, setup.n_layers, setup.runtimes, accumulators, [batch], CONTEXT_LENGTH)
        setup.sync()

    return harvest


def stats_pass(setup: Setup, batches: list[TokenBatch], k: int = 32) -> float:
    accumulators = _accumulators(setup, k)
    start = time.perf_counter()
    harvest_pass(setup.model, setup.arch, setup.n_layers, setup.runtimes, accumulators, batches, CONTEXT_LENGTH)
    setup.sync()
    return time.perf_counter() - start


def vm_hwm_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child would
    report its parent's peak whenever that is larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb(n_tokens: int, location: str = MODEL, device: str = "cpu") -> float:
    """Peak RSS of a fresh process that harvests ``n_tokens`` (every layer)."""
    code = (
        "import django; django.setup(); "
        "from workers.bench.harvest import _setup, make_batches, stats_pass, vm_hwm_mb; "
        f"b = make_batches({n_tokens}, {location!r}); stats_pass(_setup({location!r}, {device!r}), b); "
        "print(vm_hwm_mb())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=settings.BASE_DIR, env={**__import__("os").environ,
                                                    "DJANGO_SETTINGS_MODULE": "browser.settings"})
    return float(out.stdout.strip().splitlines()[-1])


def copy_rate(n_rows: int = 200_000) -> float:
    """Example rows per second through binary COPY (rolled back afterwards)."""
    from browser.core.copy import copy_rows

    values = torch.randn(CONTEXT_LENGTH).to(torch.float16).numpy().astype("<f2").tobytes()
    rows = ((-1, i, 0, 0, 0, 1, 1.5, 3, values) for i in range(n_rows))  # run -1: no real run
    with transaction.atomic():
        start = time.perf_counter()
        copy_rows("examples_example",
                  ["run_id", "unit_id", "kind", "bucket", "rank", "context_id", "max_value", "max_pos", "values"],
                  ["int8", "int8", "int2", "int2", "int2", "int8", "float8", "int2", "bytea"], rows)
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        elapsed = time.perf_counter() - start
        transaction.set_rollback(True)
    return n_rows / elapsed


HELP = "harvest speed against a bare forward pass of the same tokens, peak memory, COPY rows/s"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--tokens", type=int, default=40_960, help="tokens per timed pass")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--model", default=MODEL,
                        help=f"model to harvest, every layer's mlp.hook_post (default {MODEL}; e.g. smollm2-135m)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if opts["tokens"] < 1024:
        raise ValueError("--tokens must be at least 1024")
    device = device_for(opts["device"])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here")
    return run(tokens=opts["tokens"], rounds=opts["rounds"], location=opts["model"], device=device, log=log)


def run(*, tokens: int = 40_960, rounds: int = 3, location: str = MODEL, device: str = "cpu",
        rss_tokens: tuple[int, int] = (10_240, 40_960), copy_rows: int = 200_000,
        log: Any = sys.stderr) -> dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    batches = make_batches(tokens, location)
    n = sum(int(b.attention_mask.sum()) for b in batches)
    setup = _setup(location, device)
    bare_pass(setup, batches[:2])  # warm up
    _harvester(setup)(batches[0])  # and compile the CPU statistics pass (once per machine)
    results = []
    for r in range(rounds):
        # Per batch, side by side (timing.paired): the bare forward pass and the harvest of the
        # same batch, whose accumulators live across the round's batches as in a real run.
        results.append(timing.paired(batches, lambda b: bare_pass(setup, [b]), _harvester(setup)))
        log.write(f"round {r + 1}: bare {n / results[-1].a_wall:.0f} tok/s, harvest {n / results[-1].b_wall:.0f} "
                  f"tok/s, ratio {results[-1].ratio:.3f}\n")
    measured = timing.Rounds(results)
    bare_tps, harvest_tps = measured.tokens_per_s(n)
    log.write("measuring peak memory in fresh processes...\n")
    rss_10k, rss_40k = (peak_rss_mb(n, location, device) for n in rss_tokens)
    log.write("measuring COPY throughput...\n")
    return {
        "model": location, "device": device, "units": setup.n_units, "layers": setup.n_layers, "k": 32,
        "tokens": n, "context_length": CONTEXT_LENGTH, "batch_size": BATCH,
        "threads": torch.get_num_threads(), "rounds": rounds,
        "bare_tokens_per_s": round(bare_tps, 1), "harvest_tokens_per_s": round(harvest_tps, 1),
        # The median of the rounds' ratios, each from batches timed side by side.
        "harvest_vs_bare": round(measured.ratio, 3),
        "harvest_vs_bare_per_round": measured.per_round(),
        "harvest_vs_bare_cpu": round(measured.cpu_ratio, 3),
        "peak_rss_mb_10k": round(rss_10k, 1), "peak_rss_mb_40k": round(rss_40k, 1),
        "copy_rows_per_s": round(copy_rate(copy_rows), 1),
        "max_rss_mb_this_process": round(vm_hwm_mb(), 1),
    }
