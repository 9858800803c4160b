"""How an attribution graph is built: a frozen config, torch-free so the web side validates and
hashes a request with the same class the worker computes with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

BASES = ("neurons", "sae", "transcoder")
# Model types whose blocks workers.compute.replacement writes out.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "gpt2", "gpt_neox")
# A prompt longer than this many characters is refused before anything is queued (a token is at
# least one character, so this also bounds the tokens the worker traces).
MAX_PROMPT_CHARS = 256
MAX_UNITS = 2048
# The edits a causal check of graph nodes makes (workers.compute.graph_check): zero (ablate),
# scale (a' = value a), clamp (a' = value), steer (a' = a + value); |value| at most MAX_CHECK_VALUE.
CHECK_OPS = ("zero", "scale", "clamp", "steer")
MAX_CHECK_VALUE = 1e4


@dataclass(frozen=True)
class GraphConfig:
    """How one attribution graph is built; stored with it, its hash names the graph."""

    basis: str = "neurons"
    """The units: ``neurons`` (MLP activations at ``mlp.hook_post``, every layer), ``sae`` (the
    features of the SAEs in ``saes``, neurons on the other layers) or ``transcoder`` (the features of
    the transcoders in ``saes``, neurons on the other layers)."""
    saes: tuple[tuple[int, str], ...] = ()
    """Basis ``sae``: (layer, SAE source name) of the SAEs on ``blocks.{layer}.mlp.hook_post``; basis
    ``transcoder``: (layer, transcoder source name) of the transcoders on ``blocks.{layer}.mlp.hook_in``."""
    max_logits: int = 10
    """At most this many target logits (the most probable next tokens) ..."""
    logit_probability: float = 0.95
    """... taken until their probabilities sum to this."""
    target_tokens: tuple[int, ...] = ()
    """Explicit target token ids (instead of the top logits)."""
    max_units: int = 256
    """Units that become nodes, by total attribution to the targets; each costs one backward row."""
    node_threshold: float = 0.8
    """Pruning keeps the nodes that explain this share of the influence on the targets."""
    edge_threshold: float = 0.98
    """... then the edges that explain this share of the kept graph's edge influence."""
    batch_size: int = 8
    """Target rows per pass of the transposed frozen model (memory grows with it: one
    ``[batch_size, T, d_model]`` gradient and ``[batch_size, nodes]`` rows at a time)."""
    version: int = 1
    """Bumped when the computation changes, so an old graph is not taken for a new one."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_tokens": list(self.target_tokens),
                "saes": [[layer, name] for layer, name in self.saes]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown graph settings: {', '.join(unknown)}")
        values = dict(data)
        values["target_tokens"] = tuple(int(t) for t in values.get("target_tokens", ()))
        values["saes"] = tuple((int(layer), str(name)) for layer, name in values.get("saes", ()))
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse settings no graph can be built with (a ValueError naming the setting)."""
        if self.basis not in BASES:
            raise ValueError(f"basis {self.basis!r} has no attribution graphs yet; choose from {', '.join(BASES)}")
        if (self.basis != "neurons") != bool(self.saes):
            raise ValueError("basis sae names its SAEs and basis transcoder its transcoders (and only they do)")
        if not 1 <= self.max_units <= MAX_UNITS:
            raise ValueError(f"max_units must be between 1 and {MAX_UNITS}")
        if not 1 <= self.max_logits <= 50 or not 1 <= self.batch_size <= 256:
            raise ValueError("max_logits must be between 1 and 50 and batch_size between 1 and 256")
        for name in ("logit_probability", "node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    def hash(self, *, model: str, prompt: str) -> str:
        payload = json.dumps({"config": self.to_dict(), "model": model, "prompt": prompt}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()
