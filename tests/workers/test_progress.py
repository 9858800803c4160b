"""Progress on the command line: a bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from tqdm import tqdm

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from workers.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_log_gets_lines() -> None:
    assert isinstance(progress_bar(total=5, desc="x", file=Terminal()), tqdm)
    assert isinstance(progress_bar(total=5, desc="x", file=io.StringIO()), LineProgress)


def test_many_updates_make_one_line_per_period_and_a_last_one() -> None:
    out = io.StringIO()
    with LineProgress(total=1000, desc="harvest", file=out, every_s=3600) as bar:
        for i in range(1000):
            bar.n = i + 1
            bar.set_postfix_str(f"shard {i // 100 + 1} of 10", refresh=False)
            bar.refresh()
    assert out.getvalue().splitlines() == [out.getvalue().strip()]  # only the last state
    assert out.getvalue().startswith("harvest: 1,000/1,000 (100%) in 0 s") and "shard 10 of 10" in out.getvalue()
    every = io.StringIO()
    with LineProgress(total=3, desc="t", file=every, every_s=0) as bar:
        for i in range(3):
            bar.n = i + 1
            bar.refresh()
    assert [line.split(" in ")[0] for line in every.getvalue().splitlines()] == ["t: 1/3 (33%)", "t: 2/3 (67%)",
                                                                                 "t: 3/3 (100%)"]


@pytest.mark.slow
def test_a_harvest_logged_to_a_file_writes_lines_not_bar_redraws(tiny: Model, corpus: Corpus) -> None:
    out = io.StringIO()
    call_command("harvest", model="tiny", corpus=corpus.name, hooks="blocks.0.mlp.hook_post", k=4, batch_size=2,
                 inline=True, stdout=out)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) <= 6, lines  # 'running in this process', one or two progress lines, 'done'
    assert any(line.startswith("harvest tiny x lines: ") and "finalizing: writing" in line for line in lines), lines
