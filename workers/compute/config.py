"""The frozen configuration of a harvest run, saved with its results and hashed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CONFIG_VERSION = 1
MAX_K = 1024
MAX_BATCH = 4096
DEFAULT_HOOKS = "blocks.*.mlp.hook_post"
"""What a harvest hooks when it is not told: every layer's MLP neurons."""


@dataclass(frozen=True)
class SourceConfig:
    """One basis to harvest: the neurons at a hook point, or the features of a stored SAE."""

    name: str
    """The source's name (unique per model): the hook name for neurons, the SAE's name otherwise."""
    hook: str
    """The hook point whose activations feed it, e.g. ``blocks.3.mlp.hook_post``."""
    sae_id: int | None = None
    """The catalog id of the SAE whose latents are the units (None: the neurons themselves)."""


@dataclass(frozen=True)
class HarvestConfig:
    sources: tuple[SourceConfig, ...]
    """What to harvest; all sources share one forward pass."""
    k: int = 32
    """Top contexts kept per unit (one example per context)."""
    batch_size: int = 32
    """Contexts per forward pass."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16 (half precision only on a GPU)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda[:N]."""
    seed: int = 0
    """Seeds the hash that samples interval and random examples."""
    exclude_special: bool = True
    """Leave BOS/EOS/PAD/CLS/SEP positions out of every statistic and example."""
    samples_per_interval: int = 6
    """Examples sampled per activation interval, and random firing examples per unit."""
    n_intervals: int = 6
    """Interval groups shown per unit: the highest octaves [2^e, 2^(e+1)) in which it fired."""
    hist_stride: int = 7
    """The histogram counts every ``hist_stride``-th token of the corpus (a fixed subsample,
    prime so it is independent of position); density, mean and max use every token."""
    corr_stride: int = 4
    """Correlation sums between each SAE's latents and the neurons of its hook (for the comparison
    tables) count every ``corr_stride``-th token of the corpus, like the histogram; 1 counts every
    token, 0 turns them off."""
    shard_contexts: int = 2048
    """Contexts per shard: the unit of work a worker claims (and redoes if it dies)."""
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form settings that change results (kept in the hash)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a harvest needs at least one source")
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K} (got {self.k})")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH} (got {self.batch_size})")
        if self.dtype not in {"float32", "bfloat16", "float16"}:
            raise ValueError(f"dtype must be float32, bfloat16 or float16 (got {self.dtype!r})")
        if not (self.device in {"auto", "cpu", "cuda"} or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu or cuda[:N] (got {self.device!r})")
        if not 1 <= self.samples_per_interval <= 64 or not 1 <= self.n_intervals <= 32:
            raise ValueError("samples per interval must be 1..64 and intervals 1..32")
        if not 1 <= self.hist_stride <= 1000 or self.shard_contexts < 1:
            raise ValueError("hist stride must be 1..1000 and shard size positive")
        if not 0 <= self.corr_stride <= 1000:
            raise ValueError(f"correlation stride must be 0..1000 (got {self.corr_stride})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HarvestConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["sources"] = tuple(SourceConfig(**s) for s in data["sources"])
        return cls(**values)

    def hash(self) -> str:
        """Identifies the results. The batch size (which contexts share a forward pass and an SAE
        batch sum) and the device change the floats, so they are in it; shards are cut at whole
        batches and change nothing, so ``shard_contexts`` is left out."""
        data = self.to_dict()
        data.pop("shard_contexts")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def harvest_default(name: str) -> Any:
    """The default of one ``HarvestConfig`` field: the command line, the API and requests read
    their defaults here, so they cannot drift apart."""
    return next(f.default for f in fields(HarvestConfig) if f.name == name)
