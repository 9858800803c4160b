"""`bench harvest`: the harness measures what it says on the model it is given (small sizes here;
the figures themselves come from the command, never from a test)."""

from __future__ import annotations

import functools
import io
import json

import pytest
from django.core.management import call_command

from workers.bench import harvest as bench

pytestmark = pytest.mark.slow


def test_bench_harvest_json_has_the_issue_keys(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small sizes for the fresh-process memory passes and the COPY too (the command's defaults,
    # 10k and 40k tokens over all of MiniLM's layers and 200k rows, were most of this test's time).
    monkeypatch.setattr(bench, "run", functools.partial(bench.run, rss_tokens=(1024, 2048), copy_rows=20_000))
    out = io.StringIO()
    call_command("bench", "harvest", "--json", "--tokens", "1024", "--rounds", "1", stdout=out, stderr=io.StringIO())
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    for key in ("bare_tokens_per_s", "harvest_tokens_per_s", "harvest_vs_bare", "peak_rss_mb_10k",
                "peak_rss_mb_40k", "copy_rows_per_s"):
        assert result[key] > 0, key
    assert (result["model"], result["units"], result["layers"], result["tokens"]) == ("minilm-l6", 9216, 6, 1024)
    assert result["harvest_vs_bare"] == result["harvest_vs_bare_per_round"][0]


def test_bench_harvest_hooks_every_layer_of_a_causal_lm() -> None:
    setup = bench._setup("smollm2-135m", "cpu")
    assert (setup.n_layers, setup.n_units, setup.arch.causal) == (30, 30 * 1536, True)
    batches = bench.make_batches(1024, "smollm2-135m")
    assert all(int(b.ids[0, 0]) == 1 for b in batches)  # causal layout: each context starts with BOS
    accumulators = bench._accumulators(setup)
    bench.harvest_pass(setup.model, setup.arch, setup.n_layers, setup.runtimes, accumulators, batches[:1],
                       bench.CONTEXT_LENGTH)
    states = [acc.state() for acc in accumulators.values()]
    assert all(int(s["n_tokens"]) == int((~batches[0].invalid).sum()) for s in states)
    assert all(int(s["fire"].sum()) > 0 for s in states)  # every layer was fed
    assert bench.bare_pass(setup, batches[:1]) > 0
