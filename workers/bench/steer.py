"""`bench steer`: the cost of interventions on a causal LM (SmolLM2 by default).

- ``steer_vs_plain``: generation tokens/s with an intervention hook (a layer-15 neuron steered at
  every position) over tokens/s without, each prompt generated both ways side by side (ABBA,
  ``timing.paired``), median of the rounds;
- ``steer_p50_ms`` / ``steer_p95_ms``: server-side time of a standard steering request (the worker's
  ``steer`` pipeline: a 32-token prompt, 32 tokens generated with and without the edit);
- ``intervention_units_per_s``: the intervention-score computation (``ablation_effect``: each unit
  zero-ablated on its contexts, plain and ablated rows in one batch) on prefixes of the fixture
  corpus, at each number of contexts per unit in ``--contexts`` (``..._by_contexts``).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from browser.catalog.models import Unit
from browser.catalog.services import source_get_or_create, units_ensure
from workers.bench.timing import Rounds, paired
from workers.compute.ablation import ablation_effect
from workers.compute.interventions import Edit, Intervention
from workers.compute.steering import cpu_threads, generate
from workers.pipeline import loader
from workers.pipeline.models import model_get_or_register
from workers.pipeline.steer import GENERATION_THREADS, steer

HELP = ("generation tokens/s with an intervention hook vs without (side by side), steering request p50/p95, "
        "intervention-score units/s by contexts per unit")
FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
LAYER, NEURON, STRENGTH = 15, 42, 8.0


def add_arguments(parser: Any) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=6, help="prompts per round of the side-by-side timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12, help="steering requests timed for p50/p95")
    parser.add_argument("--units", type=int, default=6, help="units scored at each --contexts value")
    parser.add_argument("--contexts", default="4,8,16", help="contexts per unit, comma-separated")
    parser.add_argument("--threads", type=int, default=GENERATION_THREADS,
                        help="CPU threads for the generation and ablation timings (the steering pipeline sets its own)")


def _texts(tokenizer: Any, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """n windows of ``length`` tokens from the fixture corpus (seeded)."""
    ids: list[int] = []
    for line in FIXTURE.read_text().splitlines():
        ids += tokenizer(json.loads(line)["text"])["input_ids"]
        if len(ids) > 200 * length:
            break
    rng = random.Random(seed)
    return [ids[s: s + length] for s in (rng.randrange(len(ids) - length) for _ in range(n))]


def _synced(device: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    return run


def _generation_ratio(model: Any, arch: Any, n_layers: int, prompts: list[list[int]], opts: dict[str, Any],
                      device: str) -> tuple[Rounds, int]:
    edit = Intervention([Edit(f"blocks.{LAYER}.mlp.hook_post", NEURON, "steer", STRENGTH)])
    batches = [torch.tensor([p], device=device) for p in prompts]

    def plain(ids: torch.Tensor) -> object:
        return _synced(device, lambda: generate(model, arch, n_layers, ids, opts["tokens"]))()

    def steered(ids: torch.Tensor) -> object:
        return _synced(device, lambda: generate(model, arch, n_layers, ids, opts["tokens"], edit))()

    plain(batches[0])  # warm up (allocations, kernels)
    return Rounds([paired(batches, plain, steered) for _ in range(opts["rounds"])]), len(prompts) * opts["tokens"]


def _latency_ms(model_name: str, tokenizer: Any, prompts: list[list[int]], opts: dict[str, Any],
                device: str) -> list[float]:
    model = model_get_or_register(model_name)
    hook = f"blocks.{LAYER}.mlp.hook_post"
    units_ensure(source=source_get_or_create(model=model, name=hook, hook_point=hook, layer=LAYER, kind="neurons",
                                             n_units=model.d_mlp))
    unit = Unit.objects.get(source__model=model, source__name=hook, index=NEURON)
    times = []
    for i in range(opts["requests"]):
        text = tokenizer.decode(prompts[i % len(prompts)][: opts["prompt_tokens"] - 1])  # BOS comes back
        request = {"prompt": text, "units": [{"unit_id": unit.pk, "op": "steer", "value": STRENGTH}],
                   "n_tokens": opts["tokens"]}
        start = time.perf_counter()
        _synced(device, partial(steer, request=request, device=device))()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _units_per_s(model: Any, arch: Any, n_layers: int, windows: list[list[int]], opts: dict[str, Any],
                 contexts: int, device: str) -> float:
    rng = random.Random(contexts)
    start = time.perf_counter()
    for u in range(opts["units"]):
        prefixes = [w[: rng.randrange(8, len(w) + 1)] for w in rng.sample(windows, contexts)]
        edit = Edit(f"blocks.{LAYER}.mlp.hook_post", u, "zero")
        _synced(device, partial(ablation_effect, model, arch, n_layers, prefixes, edit, [0, 1, 2]))()
    return opts["units"] / (time.perf_counter() - start)


def main(opts: dict[str, Any], log: Any) -> dict[str, Any]:
    device = loader.device_for(opts["device"])
    catalog = model_get_or_register(opts["model"])
    model, arch, tokenizer = loader.model_on(catalog, device)
    prompts = _texts(tokenizer, max(opts["prompts"], opts["requests"]), opts["prompt_tokens"])
    log.write(f"generation with and without the hook, {opts['rounds']} rounds...\n")
    with cpu_threads(opts["threads"] if device == "cpu" else None):
        rounds, n_tokens = _generation_ratio(model, arch, catalog.n_layers, prompts[: opts["prompts"]], opts, device)
    plain_tps, steered_tps = rounds.tokens_per_s(n_tokens)
    log.write("steering requests...\n")
    times = sorted(_latency_ms(opts["model"], tokenizer, prompts, opts, device))
    windows = _texts(tokenizer, 64, 64, seed=1)
    by_contexts = {}
    for c in (int(x) for x in str(opts["contexts"]).split(",") if x.strip()):
        log.write(f"intervention scores at {c} contexts per unit...\n")
        with cpu_threads(opts["threads"] if device == "cpu" else None):
            by_contexts[str(c)] = round(_units_per_s(model, arch, catalog.n_layers, windows, opts, c, device), 3)
    return {
        "model": opts["model"], "device": device, "threads": opts["threads"], "steer_vs_plain": round(rounds.ratio, 3),
        "steer_vs_plain_rounds": rounds.per_round(), "plain_tokens_per_s": round(plain_tps, 1),
        "steered_tokens_per_s": round(steered_tps, 1),
        "steer_p50_ms": round(statistics.median(times), 1),
        "steer_p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
        "intervention_units_per_s": by_contexts.get("16", next(iter(by_contexts.values()), 0.0)),
        "intervention_units_per_s_by_contexts": by_contexts,
    }
