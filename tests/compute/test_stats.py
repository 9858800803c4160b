"""The streaming accumulator against a brute force that keeps every activation."""

from __future__ import annotations

import pytest
import torch

from tests.compute.reference import brute_force
from workers.compute.stats import Batch, UnitAccumulator, hist_bin_lower_edges, hist_bins, summarize

K, S, NI, STRIDE, SEED = 5, 3, 4, 7, 11


def _data(seed: int, C: int = 40, T: int = 12, U: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.randn(1, 1, U, generator=gen) * 2)
    acts = torch.randn(C, T, U, generator=gen) * scale
    acts[acts.abs() < 0.3] = 0.0  # exact zeros, as ReLU makes
    acts[3, :, 2] = acts[5, :, 2] = 1.5  # exact ties between contexts
    invalid = torch.zeros(C, T, dtype=torch.bool)
    invalid[:, 0] = True  # a BOS-like position
    invalid[7, 6:] = True  # padding
    return acts, invalid


# Both ways of computing a batch's statistics: the compiled CPU pass and torch's (other devices).
PATHS = pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])


def _accumulate(acts: torch.Tensor, invalid: torch.Tensor, contexts: list[int], batch: int,
                fused: bool | None) -> UnitAccumulator:
    T, U = acts.shape[1], acts.shape[2]
    acc = UnitAccumulator(U, k=K, samples=S, hist_stride=STRIDE, seed=SEED, unit_offset=100, fused=fused)
    for start in range(0, len(contexts), batch):
        ids = contexts[start : start + batch]
        idx = torch.tensor(ids)
        acc.update(Batch(acts[idx], idx, invalid[idx], ids[0] * T))
    return acc


def _compare(acc: UnitAccumulator, acts: torch.Tensor, invalid: torch.Tensor) -> None:
    got = summarize(acc.state(), n_intervals=NI)
    want = brute_force(acts.numpy(), invalid.numpy(), k=K, samples=S, n_intervals=NI, hist_stride=STRIDE,
                       seed=SEED, unit_offset=100)
    for g, w in zip(got, want, strict=True):
        assert g.n_tokens == w["n_tokens"]
        assert g.fire_count == w["fire"]
        assert g.mean * g.n_tokens == pytest.approx(w["total"], rel=1e-5, abs=1e-3)
        assert g.max == w["max"]
        assert g.hist == w["hist"]
        assert g.top == w["top"]
        assert g.intervals == w["intervals"]
        assert g.random == w["random"]


@PATHS
@pytest.mark.parametrize("batch", [1, 4, 40])
def test_single_pass_equals_brute_force(batch: int, fused: bool) -> None:
    acts, invalid = _data(0)
    _compare(_accumulate(acts, invalid, list(range(40)), batch, fused), acts, invalid)


@PATHS
def test_shards_merge_exactly_in_any_order(fused: bool) -> None:
    acts, invalid = _data(1)
    # Shard boundaries fall on batch boundaries (the pipeline rounds shards to whole batches),
    # so every batch's float32 sums are the same as in one pass.
    parts = [list(range(0, 12)), list(range(12, 28)), list(range(28, 40))]
    states = [_accumulate(acts, invalid, part, 4, fused).state() for part in parts]
    merged = UnitAccumulator.from_state(states[2], seed=SEED, hist_stride=STRIDE, unit_offset=100)
    merged.merge_state(states[0])
    merged.merge_state(states[1])
    _compare(merged, acts, invalid)
    single = _accumulate(acts, invalid, list(range(40)), 4, fused).state()
    for name, tensor in merged.state().items():
        assert torch.equal(tensor, single[name]), name


def test_histogram_bins_follow_the_float_grid() -> None:
    edges = hist_bin_lower_edges()
    values = torch.tensor([-3.0, 0.0, 1e-9, 2.0**-20, 1.0, 1.24, 1.25, 3.0, 1e9])
    bins = hist_bins(values).tolist()
    assert bins[:3] == [0, 0, 0]
    for value, b in zip(values.tolist()[3:-1], bins[3:-1], strict=True):
        assert edges[b] <= value < edges[b + 1]
    assert bins[-1] == len(edges) - 1


@PATHS
def test_random_data_many_seeds(fused: bool) -> None:
    for seed in range(2, 6):
        acts, invalid = _data(seed, C=25, T=9, U=5)
        _compare(_accumulate(acts, invalid, list(range(25)), 6, fused), acts, invalid)


@PATHS
def test_bulk_sketch_inserts_with_stale_thresholds_stay_exact(monkeypatch: pytest.MonkeyPatch, fused: bool) -> None:
    import workers.compute.stats as stats

    monkeypatch.setattr(stats, "PENDING_LIMIT", 7)  # flush after almost every batch, mid-warm-up
    acts, invalid = _data(7)
    _compare(_accumulate(acts, invalid, list(range(40)), 3, fused), acts, invalid)


@PATHS
def test_accumulators_work_in_and_out_of_inference_mode(fused: bool) -> None:
    """Reused buffers made inside inference mode must still take writes outside it (and back)."""
    from workers.compute import stats

    stats._SCRATCH.clear()  # made afresh inside inference mode below
    gen = torch.Generator().manual_seed(0)
    acc = UnitAccumulator(6, k=2, samples=2, hist_stride=3, seed=0, fused=fused)
    for i, mode in enumerate([True, False, True, False]):
        with torch.inference_mode(mode):
            acts = torch.randn(2, 5, 6, generator=gen)
            acc.update(Batch(acts, torch.tensor([2 * i, 2 * i + 1]), torch.zeros(2, 5, dtype=torch.bool), 10 * i))
    assert int(acc.state()["n_tokens"]) == 40


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_pass_equals_torch_passes(threads: int) -> None:
    """The compiled pass splits the units between threads: any split gives torch's state."""
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(24, 16, 37, generator=gen) * torch.exp(torch.randn(1, 1, 37, generator=gen))
    invalid = torch.rand(24, 16, generator=gen) < 0.1
    invalid[5] = True  # a context without a valid token
    states = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for fused in (True, False):
            acc = UnitAccumulator(37, k=3, samples=2, hist_stride=5, seed=1, unit_offset=7, fused=fused)
            for start in range(0, 24, 8):
                idx = torch.arange(start, start + 8)
                acc.update(Batch(acts[idx], idx, invalid[idx], start * 16 + 3))
            states.append(acc.state())
    finally:
        torch.set_num_threads(previous)
    fused_state, torch_state = states
    for name in torch_state:
        if name == "total":  # float32 sums in another order, then 2^-16 fixed point per context
            assert (fused_state[name] - torch_state[name]).abs().max() <= 24
        else:
            assert torch.equal(fused_state[name], torch_state[name]), name
    assert int(torch_state["fire"].sum()) > 0


def test_without_numba_the_torch_passes_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.compute import stats

    monkeypatch.setattr(stats, "_kernels", lambda: None)  # as where numba can't be imported
    acts, invalid = _data(0)
    acc = _accumulate(acts, invalid, list(range(40)), 4, fused=None)
    assert acc.fused is False
    _compare(acc, acts, invalid)


def _values_match(acc: UnitAccumulator, acts: torch.Tensor, invalid: torch.Tensor) -> int:
    """Every example summarize chooses has its kept values: the activations of its unit over its
    context in float16, and the first position of its maximum over the valid tokens."""
    from workers.compute.values import lookup, pair_keys

    state = acc.state()
    checked = 0
    for u, s in enumerate(summarize(state, n_intervals=NI)):
        contexts = [c for c, _ in s.top] + [c for _, m in s.intervals for c, _ in m] + [c for c, _ in s.random]
        for c in contexts:
            row = int(lookup(state, pair_keys(torch.tensor([u]), torch.tensor([c])))[0])
            want = acts[c, :, u].float()
            assert torch.equal(state["ex_val"][row], want.half()), (u, c)
            assert int(state["ex_pos"][row]) == int(want.masked_fill(invalid[c], float("-inf")).argmax())
            checked += 1
    return checked


@pytest.mark.parametrize("path", ["fused", "torch", "sparse"])
@pytest.mark.parametrize("sweep_often", [False, True], ids=["sweeps-rare", "sweeps-often"])
def test_kept_values_are_the_chosen_examples_activations(path: str, sweep_often: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The values that once came from a second forward pass come from the first one."""
    from workers.compute import values
    from workers.compute.sae.stats import SparseUnitAccumulator

    if sweep_often:
        monkeypatch.setattr(values, "MIN_GROWTH", 0)  # a sweep whenever the store grew by half
    acts, invalid = _data(5)
    if path == "sparse":
        acts = acts.clamp(min=0)
        acc: UnitAccumulator = SparseUnitAccumulator(9, k=K, samples=S, hist_stride=STRIDE, seed=SEED,
                                                     unit_offset=100, n_intervals=NI)
    else:
        acc = UnitAccumulator(9, k=K, samples=S, hist_stride=STRIDE, seed=SEED, unit_offset=100,
                              fused=path == "fused", n_intervals=NI)
    for start in range(0, 40, 3):
        idx = torch.arange(start, min(start + 3, 40))
        acc.update(Batch(acts[idx], idx, invalid[idx], start * acts.shape[1]))
    assert _values_match(acc, acts, invalid) > 100
    kept = acc.state()["ex_key"].numel()
    assert kept <= 9 * (K + (NI + 1) * S)  # only what can still be chosen is kept


@PATHS
def test_kept_values_survive_shard_merges(fused: bool) -> None:
    acts, invalid = _data(2)
    shards = [list(range(0, 13)), list(range(13, 29)), list(range(29, 40))]
    states = [_accumulate(acts, invalid, ids, 4, fused).state() for ids in shards]
    merged = UnitAccumulator.from_state(states[2], seed=SEED, hist_stride=STRIDE, unit_offset=100, n_intervals=NI)
    for state in (states[0], states[1]):
        merged.merge_state(state)
    assert _values_match(merged, acts, invalid) > 100
