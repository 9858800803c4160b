"""`bench scores`: the score job's throughput on a demo-like run (MiniLM over the fixture corpus,
the neurons of one MLP layer and an SAE on them), and the cost of streaming correlation sums
inside a harvest pass (the same batches with and without ``scores.CorrelationAccumulator``)."""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.core.management import call_command

from browser.catalog.models import Source
from browser.corpora.models import Corpus
from browser.runs.models import Run
from fixtures.tiny_sae import random_sae
from workers.bench.harvest import CONTEXT_LENGTH, MODEL, make_batches
from workers.cli import run_here
from workers.compute import hooks, loading, scores
from workers.compute.config import HarvestConfig
from workers.compute.harvest import SourceRuntime, TokenBatch, harvest_pass
from workers.compute.sae.model import SparseAutoencoder
from workers.compute.sae.stats import SparseUnitAccumulator
from workers.compute.stats import Batch, UnitAccumulator
from workers.pipeline.harvest import harvest_create, neuron_sources
from workers.pipeline.models import model_get_or_register
from workers.pipeline.saes import sae_register, sae_sources
from workers.pipeline.scores import scores_compute
from workers.tasks import harvest_work

HOOK = "blocks.2.mlp.hook_post"
N_LAYERS = 6
D_MLP = 1536
CORPUS = "bench-scores"
SAE_NAME = "bench-scores-sae"
FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"

HELP = "score job units/s on MiniLM neurons + an SAE over the fixture corpus; harvest with correlation sums vs without"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--sae-width", type=int, default=4096, help="latents of the (random TopK) SAE")
    parser.add_argument("--harvest-tokens", type=int, default=4096, help="tokens per timed harvest pass")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    if opts["sae_width"] < 1 or opts["harvest_tokens"] < CONTEXT_LENGTH or opts["rounds"] < 1:
        raise ValueError("--sae-width and --rounds must be positive, --harvest-tokens at least one context")
    result: dict[str, Any] = {"model": MODEL, "hook": HOOK, "threads": torch.get_num_threads()}
    result.update(bench_score_job(opts["sae_width"], log))
    result.update(bench_correlation(opts, log))
    return result


# ---- the score job ------------------------------------------------------------------------------
def demo_run(sae_width: int, log: Any) -> Run:
    """The finished harvest run of the layer's neurons and a random TopK SAE on them over the
    fixture corpus: reused when this database already has it, else built (a few minutes on CPU)."""
    model = model_get_or_register(MODEL)
    if not Corpus.objects.filter(name=CORPUS).exists():
        log.write(f"importing {FIXTURE.name} as {CORPUS}...\n")
        call_command("import_corpus", str(FIXTURE), name=CORPUS, tokenizer=MODEL, context_length=CONTEXT_LENGTH,
                     inline=True, stdout=io.StringIO())
    sae_name = f"{SAE_NAME}-{sae_width}"
    if not Source.objects.filter(model=model, name=sae_name).exists():
        sae_register(model=model, name=sae_name,
                     sae=random_sae(D_MLP, sae_width, architecture="topk", k=32, seed=0, hook_name=HOOK))
    config = HarvestConfig(sources=neuron_sources([HOOK]) + sae_sources(model, [sae_name]))
    run, _ = harvest_create(model=model, corpus=Corpus.objects.get(name=CORPUS), config=config)
    if run.status != Run.Status.DONE:
        log.write(f"harvesting run #{run.pk}...\n")
        run_here(harvest_work, run.job, io.StringIO())  # type: ignore[arg-type]
        run.refresh_from_db()
    if run.status != Run.Status.DONE:
        raise RuntimeError(f"the bench run #{run.pk} did not finish: {run.error}")
    return run


def bench_score_job(sae_width: int, log: Any) -> dict[str, Any]:
    """Time the score job's work function in this process (every score, relation and the layer
    superposition; it replaces its rows, so a rerun redoes the same work)."""
    run = demo_run(sae_width, log)
    units = sum(s.n_units for s in run.sources.all())
    log.write(f"scoring run #{run.pk} ({units} units)...\n")
    start = time.perf_counter()
    counts = scores_compute(run_id=run.pk, progress=lambda *args: None)
    seconds = time.perf_counter() - start
    return {"run": run.pk, "contexts": run.corpus.n_contexts, "units": units, "sae_width": sae_width,
            "score_rows": counts["scores"], "relation_rows": counts["relations"],
            "score_job_s": round(seconds, 2), "units_per_s": round(units / seconds, 1)}


# ---- correlation sums inside the harvest pass ----------------------------------------------------
class _Tap:
    """An accumulator that passes every batch on and keeps the last one's activations."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: Batch | None = None

    def update(self, batch: Batch) -> None:
        self.inner.update(batch)
        self.last = batch


class _Correlating:
    """The SAE source's accumulator, also feeding the correlation sums with the neurons' values of
    the same batch (the neuron source comes first in the hook, so its tap holds them)."""

    def __init__(self, inner: Any, neurons: _Tap, corr: scores.CorrelationAccumulator) -> None:
        self.inner, self.neurons, self.corr = inner, neurons, corr

    def update(self, batch: Batch) -> None:
        self.inner.update(batch)
        assert self.neurons.last is not None
        valid = ~batch.invalid.reshape(-1)
        x = self.neurons.last.acts.reshape(valid.shape[0], -1)  # [B, L, N] -> [B*L, N]
        y = batch.acts.reshape(valid.shape[0], -1)  # [B, L, F] -> [B*L, F]
        self.corr.update(x[valid], y[valid])


def _harvest(model: Any, arch: hooks.Architecture, sae: SparseAutoencoder, batches: list[TokenBatch],
             correlate: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one harvest pass, with or without the sums."""
    runtimes = [SourceRuntime(HOOK, HOOK, D_MLP, 0),
                SourceRuntime("sae", HOOK, sae.cfg.d_sae, 1 << 21, sae.encode, sparse=True)]
    neurons = UnitAccumulator(D_MLP, k=32, samples=6, hist_stride=7, seed=0)
    features = SparseUnitAccumulator(sae.cfg.d_sae, k=32, samples=6, hist_stride=7, seed=0, unit_offset=1 << 21)
    accumulators: dict[str, Any] = {HOOK: neurons, "sae": features}
    if correlate:
        tap = _Tap(neurons)
        accumulators = {HOOK: tap, "sae": _Correlating(features, tap, scores.CorrelationAccumulator(
            D_MLP, sae.cfg.d_sae))}
    wall, cpu = time.perf_counter(), time.process_time()
    harvest_pass(model, arch, N_LAYERS, runtimes, accumulators, batches, CONTEXT_LENGTH)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_correlation(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    model = loading.load_torch_model(MODEL, Path(settings.CACHE_DIR), False, "cpu", "float32")
    arch = hooks.architecture_for("bert")
    sae = random_sae(D_MLP, opts["sae_width"], architecture="topk", k=32, seed=0, hook_name=HOOK)
    batches = make_batches(opts["harvest_tokens"])
    n = sum(int(b.attention_mask.sum()) for b in batches)
    _harvest(model, arch, sae, batches[:1], correlate=True)  # warm up
    plain, with_corr = [], []
    for r in range(opts["rounds"]):  # interleaved, so both see the same machine
        plain.append(_harvest(model, arch, sae, batches, correlate=False))
        with_corr.append(_harvest(model, arch, sae, batches, correlate=True))
        log.write(f"round {r + 1}: harvest {n / plain[-1][0]:.0f} tok/s, with correlation sums "
                  f"{n / with_corr[-1][0]:.0f} tok/s (CPU time {plain[-1][1]:.1f} s vs {with_corr[-1][1]:.1f} s)\n")
    ratios = [p[0] / c[0] for p, c in zip(plain, with_corr, strict=True)]
    return {"harvest_tokens": n, "harvest_tokens_per_s": round(n / min(p[0] for p in plain), 1),
            "harvest_with_corr_tokens_per_s": round(n / min(c[0] for c in with_corr), 1),
            # Tokens/s with the sums over tokens/s without, the median of the rounds' ratios (a
            # burst of load from other processes spoils one round, not the figure).
            "harvest_with_corr_vs_without": round(statistics.median(ratios), 3),
            "harvest_with_corr_vs_without_per_round": [round(x, 3) for x in ratios],
            # The same from this process's CPU time, steadier on a shared machine.
            "harvest_with_corr_vs_without_cpu": round(statistics.median(
                p[1] / c[1] for p, c in zip(plain, with_corr, strict=True)), 3)}
