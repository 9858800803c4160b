"""Transcoders: training recovers a planted sparse MLP; SAELens and circuit-tracer files round-trip
exactly; bad shapes are refused with a clear error. References are written here from the planted
map and from the file layouts' published definitions, not with the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from workers.compute.sae import files
from workers.compute.sae.model import SaeConfig, SparseAutoencoder, tensor_shapes
from workers.compute.sae.train import TrainConfig
from workers.compute.sae.transcoder_train import pairs, train_transcoder, transcoder_quality

D_IN, D_OUT, N_TRUE = 24, 20, 32


class PlantedMLP(torch.nn.Module):
    """An MLP that is a known sparse map: true feature i reads direction E_i of the input and, when its
    input passes a threshold, writes relu(x . E_i - 0.5) along D_i of the output."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        E = torch.randn(N_TRUE, D_IN, generator=g)
        D = torch.randn(N_TRUE, D_OUT, generator=g)
        self.E, self.D = E / E.norm(dim=1, keepdim=True), D / D.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.E.T - 0.5) @ self.D

    def inputs(self, n: int, g: torch.Generator) -> torch.Tensor:
        """MLP inputs made of the true features, each on with probability 0.06, sized 1-3."""
        on = torch.rand(n, N_TRUE, generator=g) < 0.06
        size = 1 + 2 * torch.rand(n, N_TRUE, generator=g)
        return (on * size) @ self.E


def _chunks(mlp: PlantedMLP, n_chunks: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = [mlp.inputs(1024, g) for _ in range(n_chunks)]
    return list(pairs(xs, [mlp(x) for x in xs]))


def mmcs(true: torch.Tensor, learned: torch.Tensor) -> float:
    """Mean over the true directions of the best cosine with a learned one."""
    t = true / true.norm(dim=1, keepdim=True)
    learned = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((t @ learned.T).max(1).values.mean())


@pytest.mark.parametrize("skip", [False, True])
def test_training_recovers_a_planted_sparse_mlp(skip: bool) -> None:
    torch.set_num_threads(1)
    mlp = PlantedMLP(seed=3)
    config = TrainConfig(architecture="topk", d_sae=64, k=6, steps=1500, batch_tokens=256, buffer_tokens=4096,
                         lr=3e-3, dead_after_tokens=20_000, seed=1)
    data = _chunks(mlp, 40, seed=5)
    seen: list[int] = []
    result = train_transcoder(iter(data * 10), D_IN, D_OUT, config, skip=skip, hook_name="blocks.2.mlp.hook_in",
                              progress=lambda step, total: seen.append(step))
    tc = result.transcoder
    assert seen[-1] == config.steps and result.loss_curve[-1]["step"] == config.steps - 1
    assert tc.cfg.transcoder and tc.cfg.skip == skip and tc.W_dec.shape == (64, D_OUT)
    # Features are recovered on both sides: decoder rows = D_i, encoder columns ~ E_i. With a skip term
    # part of each relu's linear trend goes to W_skip, so the directions are a little less pure (measured
    # 0.898 and 0.864 at this seed; 0.909 with 2,500 steps).
    floor = 0.85 if skip else 0.9
    assert mmcs(mlp.D, tc.W_dec.detach()) >= floor
    assert mmcs(mlp.E, tc.W_enc.detach().T) >= floor - 0.05
    held_out = _chunks(mlp, 4, seed=99)
    quality = transcoder_quality(tc, held_out)
    assert quality["fvu"] < 0.1 and quality["l0"] <= 6
    # The stored FVU is the one written out here from the planted map.
    x, y = torch.cat(held_out)[:, :D_IN], torch.cat(held_out)[:, D_IN:]
    with torch.no_grad():
        err = (tc(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert quality["fvu"] == pytest.approx(float(err), rel=1e-4)
    assert result.loss_curve[-1]["fvu"] < result.loss_curve[0]["fvu"]


def test_training_refuses_chunks_of_the_wrong_width() -> None:
    config = TrainConfig(architecture="topk", d_sae=8, k=2, steps=2, batch_tokens=4, buffer_tokens=8)
    with pytest.raises(ValueError, match=r"\[n, d_in \+ d_out\] = \[n, 44\].*\[16, 40\]"):
        train_transcoder(iter([torch.zeros(16, 40)]), D_IN, D_OUT, config)
    with pytest.raises(ValueError, match="TopK"):
        train_transcoder(iter([torch.zeros(16, 44)]), D_IN, D_OUT, TrainConfig(architecture="relu", d_sae=8))
    with pytest.raises(ValueError, match="differ in tokens"):
        list(pairs([torch.zeros(3, D_IN)], [torch.zeros(4, D_OUT)]))


def random_transcoder(*, architecture: str = "topk", skip: bool = True, seed: int = 0, layer: int = 2
                      ) -> SparseAutoencoder:
    cfg = SaeConfig(architecture=architecture, d_in=D_IN, d_sae=40, k=5 if architecture == "topk" else None,
                    apply_b_dec_to_input=False, hook_name=f"blocks.{layer}.mlp.hook_in", transcoder=True, d_out=D_OUT,
                    skip=skip, hook_name_out=f"blocks.{layer}.hook_mlp_out", model_name="tiny")
    g = torch.Generator().manual_seed(seed)
    tensors = {name: torch.randn(shape, generator=g) for name, shape in tensor_shapes(cfg).items()}
    if "threshold" in tensors:
        tensors["threshold"] = tensors["threshold"].abs()
    return SparseAutoencoder(cfg, tensors)


def _same(a: SparseAutoencoder, b: SparseAutoencoder) -> None:
    assert a.cfg == b.cfg
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


@pytest.mark.parametrize(("architecture", "skip"), [("topk", True), ("topk", False), ("relu", True),
                                                    ("jumprelu", False)])
def test_saelens_transcoder_layout_round_trips_exactly(tmp_path: Path, architecture: str, skip: bool) -> None:
    tc = random_transcoder(architecture=architecture, skip=skip)
    files.write_dir(tc, tmp_path / "tc")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["architecture"] == ("skip_transcoder" if skip else "jumprelu_transcoder" if architecture == "jumprelu"
                                   else "transcoder")
    assert (cfg["d_in"], cfg["d_out"], cfg["hook_name"], cfg["hook_name_out"], cfg["hook_layer_out"]) == (
        D_IN, D_OUT, "blocks.2.mlp.hook_in", "blocks.2.hook_mlp_out", 2)
    weights = load_file(str(tmp_path / "tc" / files.SAELENS_WEIGHTS))
    assert weights["W_dec"].shape == (40, D_OUT) and weights["b_dec"].shape == (D_OUT,)
    if skip:
        assert weights["W_skip"].shape == (D_OUT, D_IN)
    back, fmt = files.read_any(tmp_path / "tc")
    assert fmt == "saelens"
    _same(tc, back)


@pytest.mark.parametrize(("architecture", "skip"), [("topk", True), ("relu", False), ("jumprelu", True)])
def test_circuit_tracer_layer_file_round_trips_exactly(tmp_path: Path, architecture: str, skip: bool) -> None:
    tc = random_transcoder(architecture=architecture, skip=skip, layer=3)
    path = files.write_circuit_tracer(tc, tmp_path)
    assert path.name == "layer_3.safetensors"
    stored = load_file(str(path))
    assert stored["W_enc"].shape == (40, D_IN) and torch.equal(stored["W_enc"], tc.W_enc.detach().T)
    assert ("k" in stored) == (architecture == "topk") and ("W_skip" in stored) == skip
    assert ("activation_function.threshold" in stored) == (architecture == "jumprelu")
    back, fmt = files.read_any(path)
    assert fmt == "circuit_tracer"
    _same(tc.with_config(model_name=""), back)


def test_a_circuit_tracer_file_encodes_and_decodes_as_its_definition_says(tmp_path: Path) -> None:
    """circuit-tracer: pre = x @ W_enc.T + b_enc, TopK(k), out = acts @ W_dec + b_dec + x @ W_skip.T."""
    rng = np.random.default_rng(1)
    weights = {"W_enc": rng.normal(size=(40, D_IN)), "W_dec": rng.normal(size=(40, D_OUT)),
               "b_enc": rng.normal(size=40), "b_dec": rng.normal(size=D_OUT), "W_skip": rng.normal(size=(D_OUT, D_IN))}
    save_file({k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()} | {"k": torch.tensor(4)},
              str(tmp_path / "layer_0.safetensors"))
    tc = files.read_dir(tmp_path / "layer_0.safetensors")
    assert tc.cfg.hook_name == "blocks.0.mlp.hook_in" and tc.cfg.k == 4
    w = {k: v.astype(np.float32) for k, v in weights.items()}
    x = rng.normal(size=(8, D_IN)).astype(np.float32)
    pre = x @ w["W_enc"].T + w["b_enc"]
    acts = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :4]
    np.put_along_axis(acts, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    expected = acts @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T
    with torch.no_grad():
        np.testing.assert_allclose(tc(torch.from_numpy(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_bad_transcoder_files_get_clear_errors(tmp_path: Path) -> None:
    tc = random_transcoder()
    tensors = files.circuit_tracer_tensors(tc)
    tensors["W_skip"] = torch.zeros(D_IN, D_IN + 1)
    save_file(tensors, str(tmp_path / "layer_2.safetensors"))
    with pytest.raises(files.SaeFileError, match=r"W_skip has shape \[24, 25\], expected \[20, 24\]"):
        files.read_any(tmp_path / "layer_2.safetensors")
    files.write_dir(tc, tmp_path / "tc")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    cfg["d_out"] = D_OUT + 3
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(files.SaeFileError, match=r"W_dec has shape \[40, 20\], expected \[40, 23\]"):
        files.read_any(tmp_path / "tc")
    with pytest.raises(files.SaeFileError, match="only a transcoder"):
        files.circuit_tracer_tensors(SparseAutoencoder(SaeConfig(architecture="relu", d_in=4, d_sae=8)))
    with pytest.raises(ValueError, match="apply_b_dec_to_input must be false"):
        SaeConfig(architecture="relu", d_in=4, d_sae=8, transcoder=True)
    with pytest.raises(ValueError, match="only a transcoder has a skip"):
        SaeConfig(architecture="relu", d_in=4, d_sae=8, skip=True)
