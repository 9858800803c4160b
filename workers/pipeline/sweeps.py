"""SAE sweeps: one job trains SAEs over architectures x widths x sparsities on one synthetic set
(measured against its true features) or one real hook (FVU, L0, dead and dense fractions, loss
recovered for causal LMs), and registers each as an SAE source tagged with the sweep.

Sparsity is k for the TopK family (topk, batchtopk, matryoshka), the L1 coefficient for relu and
the L0 coefficient for jumprelu. Each SAE is named ``sweep<job>-<arch>-<width>-<sparsity>``; an
SAE already registered under its name is skipped, so a retried job only trains what is missing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from browser.catalog.models import Model, Sae
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.compute import diagnosis, recovery
from workers.compute.l0_calibration import CALIBRATED, calibrate_l0
from workers.compute.sae.train import ARCHITECTURES, TOPK_LIKE, TrainConfig, threads_for, train
from workers.pipeline.saes import sae_register
from workers.pipeline.synthetic import HOOK, synthetic_set_of

MAX_SAES = 64
MAX_WIDTH = 65_536
EVAL_SAMPLES = 16_384
DIAGNOSIS_SAMPLES = 20_000


@dataclass(frozen=True)
class SweepConfig:
    """A grid of SAEs; saved on the sweep's job."""

    architectures: tuple[str, ...] = ("topk",)
    widths: tuple[int, ...] = (256,)
    sparsities: tuple[float, ...] = (4,)
    """k for the TopK family."""
    l1_coefficients: tuple[float, ...] = (1.0,)
    l0_coefficients: tuple[float, ...] = (0.01,)
    steps: int = 1000
    batch_tokens: int = 512
    lr: float | None = 3e-3
    seed: int = 0
    eval_samples: int = EVAL_SAMPLES
    extra: dict[str, Any] = field(default_factory=dict)
    match_true_l0: bool = False
    """On a synthetic set, move each ReLU and JumpReLU SAE's thresholds after training so its L0 is the
    set's true L0 (``l0_calibration``); the L0 it trained to is kept as ``trained_l0``."""

    def __post_init__(self) -> None:
        unknown = set(self.architectures) - set(ARCHITECTURES)
        if unknown or not self.architectures:
            raise ValueError(f"unknown architectures {sorted(unknown)}; known: {', '.join(ARCHITECTURES)}")
        if not self.widths or any(not 1 <= w <= MAX_WIDTH for w in self.widths):
            raise ValueError(f"widths must be in 1..{MAX_WIDTH}")
        if len(self.grid()) > MAX_SAES:
            raise ValueError(f"a sweep trains at most {MAX_SAES} SAEs (this grid has {len(self.grid())})")

    def values(self, arch: str) -> tuple[float, ...]:
        if arch in TOPK_LIKE:
            return self.sparsities
        return self.l1_coefficients if arch == "relu" else self.l0_coefficients

    def grid(self) -> list[tuple[str, int, float]]:
        return [(a, w, v) for a in self.architectures for w, v in itertools.product(self.widths, self.values(a))]

    def train_config(self, arch: str, width: int, value: float) -> TrainConfig:
        knobs: dict[str, Any] = {"k": int(value)} if arch in TOPK_LIKE else (
            {"l1_coefficient": value} if arch == "relu" else {"l0_coefficient": value})
        return TrainConfig(architecture=arch, d_sae=width, steps=self.steps, batch_tokens=self.batch_tokens,
                           lr=self.lr, buffer_tokens=max(16_384, 4 * self.batch_tokens), seed=self.seed,
                           dead_after_tokens=50 * self.batch_tokens, **knobs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        tuples = {"architectures", "widths", "sparsities", "l1_coefficients", "l0_coefficients"}
        values: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        return cls(**values)


def sae_name(job_id: int, arch: str, width: int, value: float) -> str:
    return f"sweep{job_id}-{arch}-{width}-{value:g}"


def sweep_create(*, model: Model, config: SweepConfig, hook: str = HOOK, corpus_id: int | None = None,
                 user: Any = None) -> Job:
    """Check the request and create the sweep's job (a train_sae job whose params name the sweep)."""
    if model.kind == Model.Kind.SYNTHETIC:
        synthetic_set_of(model)
        hook = HOOK
    elif corpus_id is None:
        raise ValueError("a sweep on a real model needs a corpus")
    else:
        from workers.pipeline.sweeps_real import real_check

        real_check(model, hook, corpus_id)
    params = {"sweep": config.to_dict(), "model_id": model.pk, "hook": hook, "corpus_id": corpus_id}
    return job_create(kind=Job.Kind.TRAIN_SAE, title=f"SAE sweep of {len(config.grid())} on {model.name} {hook}",
                      params=params, created_by=user)


def sweep_work(job: Job, progress: Callable[..., None]) -> None:
    """Train, measure and register every SAE of the grid that is not registered yet."""
    p = job.params
    model = Model.objects.get(pk=p["model_id"])
    config = SweepConfig.from_dict(p["sweep"])
    if model.kind == Model.Kind.SYNTHETIC:
        data: Any = _SyntheticData(model, config)
    else:
        from workers.pipeline.sweeps_real import RealData

        data = RealData(model, p["hook"], int(p["corpus_id"]), config, progress)
    grid = config.grid()
    for i, (arch, width, value) in enumerate(grid):
        name = sae_name(job.pk, arch, width, value)
        progress(i, len(grid), f"training {name}", force=True)
        if Sae.objects.filter(source__model=model, source__name=name).exists():
            continue
        started = time.monotonic()
        train_config = config.train_config(arch, width, value)
        with threads_for(width, data.d_in):
            result = train(data.chunks(), data.d_in, train_config, hook_name=data.hook)
            sae, calibrated = result.sae, dict[str, Any]()
            if config.match_true_l0 and arch in CALIBRATED and isinstance(data, _SyntheticData):
                sae, calibrated = data.to_true_l0(sae)
            stats = data.measure(sae) | calibrated
        stats["train_seconds"] = round(time.monotonic() - started, 2)
        sae_register(model=model, name=name, sae=sae.with_config(model_name=model.name),
                     quality_stats=stats, loss_curve=result.loss_curve,
                     extra={"sweep": job.pk, "training": train_config.to_dict(), "sparsity": value,
                            "input_scale": result.scale})
    progress(len(grid), len(grid), "done", force=True)


class _SyntheticData:
    def __init__(self, model: Model, config: SweepConfig) -> None:
        self.truth = synthetic_set_of(model)
        self.config = config
        self.d_in, self.hook = self.truth.d, HOOK

    def chunks(self) -> Iterator[torch.Tensor]:
        return self.truth.chunks(4096, seed=self.config.seed + 1)

    def to_true_l0(self, sae: Any) -> tuple[Any, dict[str, Any]]:
        """The SAE moved to the set's true L0 on a calibration sample (its own seed)."""
        _, x = self.truth.sample(self.config.eval_samples, seed=self.config.seed + 4)
        with torch.no_grad():
            before = float((sae.encode(x) > 0).sum(dim=1).double().mean())
        moved, offset = calibrate_l0(sae, x, self.truth.true_l0())
        return moved, {"trained_l0": round(before, 4), "l0_offset": offset}

    def measure(self, sae: Any) -> dict[str, Any]:
        stats = recovery.sae_evaluate(sae, self.truth, n_samples=self.config.eval_samples, seed=self.config.seed + 2)
        n = max(1024, min(DIAGNOSIS_SAMPLES, (1 << 24) // sae.cfg.d_sae))  # latents [n, d_sae] under 64 MB
        _, x = self.truth.sample(n, seed=self.config.seed + 3)
        with torch.no_grad():
            found = diagnosis.diagnose(sae.encode(x), sae.W_dec.detach().cpu())
        stats["diagnosis"] = diagnosis.summary(found, self.truth.info.get("cause"))
        if stats["diagnosis"]["accuracy"] is not None:
            stats["diagnosis_accuracy"] = stats["diagnosis"]["accuracy"]
        return stats


def sweep_results(model: Model, job_id: int | None = None) -> list[dict[str, Any]]:
    """Every sweep SAE of the model (of one sweep when given): name, architecture, width, sparsity, quality."""
    rows = Sae.objects.filter(source__model=model, cfg__has_key="sweep").select_related("source")
    if job_id is not None:
        rows = rows.filter(cfg__sweep=job_id)
    return [{"name": r.source.name, "sweep": r.cfg["sweep"], "architecture": r.cfg["training"]["architecture"],
             "width": r.d_sae, "sparsity": r.cfg["sparsity"], **r.quality} for r in rows.order_by("pk")]


def best_by(results: list[dict[str, Any]], metric: str = "f1") -> dict[str, dict[str, Any]]:
    """Per architecture, the SAE with the highest ``metric``."""
    best: dict[str, dict[str, Any]] = {}
    for row in results:
        if metric in row and (row["architecture"] not in best or row[metric] > best[row["architecture"]][metric]):
            best[row["architecture"]] = row
    return best
