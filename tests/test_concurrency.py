"""Concurrent users on a real server: annotators (two tabs each) and a curator editing the same
labels over HTTP while a real worker harvests the very source they label. No server error, no
lost update, and the harvest finishes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from browser.accounts.services import token_create
from browser.catalog.models import Model, Source, Unit
from browser.catalog.services import units_ensure
from browser.corpora.models import Corpus
from browser.labels.models import Label, LabelRevision
from browser.labels.services import label_save
from browser.runs.models import Run
from fixtures.tiny import build_tiny_bert
from tests.conftest import FIXTURE_CORPUS, Cast, project_env
from workers.bench.load import (
    Ack,
    Actor,
    free_port,
    hammer,
    harvest_prepare,
    harvest_start,
    lost_updates,
    start_web,
    stop,
)
from workers.pipeline.models import model_register

HOOK = "blocks.0.mlp.hook_post"
HOT = 3  # units every client writes to
MIN_SECONDS = 12  # the clients go on at least this long, and until the harvest is done


@pytest.fixture
def tiny(db: None, tmp_path: Path) -> Model:
    return model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")


@pytest.fixture
def small_corpus(db: None, tmp_path: Path) -> Corpus:
    from django.core.management import call_command

    path = tmp_path / "small.jsonl"
    path.write_text("\n".join(FIXTURE_CORPUS.read_text().splitlines()[:3]) + "\n")
    call_command("import_corpus", str(path), name="small", context_length=32, inline=True)
    return Corpus.objects.get(name="small")


def test_lost_update_check_sees_a_missing_or_repeated_revision(cast: Cast) -> None:
    """The check the concurrency test relies on can fail: a wrong text, a revision acknowledged
    twice, a write acknowledged on top of a revision its client never read, and a gap in the
    history are each found."""
    source = Source.objects.create(model=Model.objects.create(
        name="m", kind="encoder", architecture="bert", location="-", n_layers=1, d_model=4, d_mlp=4),
        name=HOOK, hook_point=HOOK, layer=0, kind="neurons", n_units=4)
    units_ensure(source=source)
    unit = Unit.objects.get(source=source, index=0)
    first = label_save(unit=unit, user=cast.owner, text="one", revision=0)
    second = label_save(unit=unit, user=cast.owner, text="two", revision=1)
    good = [Ack(first.pk, 1, "one", 0), Ack(second.pk, 2, "two", 1)]
    assert lost_updates(good) == []
    assert len(lost_updates([*good, Ack(first.pk, 2, "three", 1)])) == 2  # not in history, and acked twice
    assert len(lost_updates([good[0], Ack(second.pk, 2, "two", 0)])) == 1  # overwrote a revision unseen
    LabelRevision.objects.filter(label=first, revision=1).delete()
    assert len(lost_updates(good)) == 2  # the acknowledged "one" is gone, and revisions start at 2


def _actors(cast: Cast, hot: list[str], n_units: int) -> list[Actor]:
    """Four tabs each for two annotators and two for a curator moderating their labels."""
    plan = [("owner", 4), ("collaborator", 4), ("curator", 2)]
    actors = []
    for who, tabs in plan:
        user = getattr(cast, who)
        _, token = token_create(user=user, owner=user, name="load")
        actors += [Actor(username=user.username, token=token, curator=who == "curator", hot=tuple(hot),
                         browse=f"tiny/{HOOK}", n_units=n_units)] * tabs
    return actors


@pytest.mark.slow
def test_annotators_and_a_curator_while_a_harvest_runs(worker: subprocess.Popen[bytes], cast: Cast, tiny: Model,
                                                       small_corpus: Corpus, tmp_path: Path) -> None:
    run, pending = harvest_prepare(model="tiny", corpus="small", hooks=HOOK, seed=0, k=8, shard_contexts=16,
                                   batch_size=8)
    assert pending and run.n_shards >= 2
    source = Source.objects.get(model=tiny, name=HOOK)
    units_ensure(source=source)  # the finalize rewrites these units while the clients label them
    hot = [f"tiny/{HOOK}/{i}" for i in range(HOT)]
    port = free_port()
    web = start_web(env=project_env(), port=port, workers=2, threads=4, log=tmp_path / "web.log")
    try:
        harvest_start(run)
        start = time.monotonic()

        def until() -> bool:
            run.refresh_from_db(fields=["status"])
            finished = run.status in (Run.Status.DONE, Run.Status.FAILED, Run.Status.CANCELLED)
            return time.monotonic() - start > 120 or (finished and time.monotonic() - start >= MIN_SECONDS)

        tally, _ = hammer(_actors(cast, hot, source.n_units), port, until, mix=(0.1, 0.95))
    finally:
        stop(web)
    run.refresh_from_db()
    assert run.status == Run.Status.DONE, run.error
    assert tally.errors == 0, tally.failures
    assert tally.status[409] > 0, "the clients never collided: the test did not test concurrency"
    assert len(tally.acks) > 50
    assert lost_updates(tally.acks) == []
    # With no error every write got an answer, so each label's last acknowledged write is its state.
    last: dict[int, Ack] = {}
    for ack in tally.acks:
        if ack.label_id not in last or ack.revision > last[ack.label_id].revision:
            last[ack.label_id] = ack
    labels = {label.pk: label for label in Label.objects.filter(unit__source=source)}
    assert set(labels) == set(last)
    assert all((labels[i].revision, labels[i].text) == (a.revision, a.text) for i, a in last.items())
    assert LabelRevision.objects.filter(editor=cast.curator, author=cast.owner).exists()
    for unit in Unit.objects.filter(source=source, index__lt=HOT):
        texts = list(Label.objects.filter(unit=unit).values_list("text", flat=True))
        assert unit.label_count == len(texts) and all(t in unit.search_text for t in texts)
        assert unit.stats_run_id == run.pk
