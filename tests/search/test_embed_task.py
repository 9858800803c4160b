"""Label writes wake the embedding worker with one queued task at a time, not one task per write
(a burst of edits filled the worker's queue ahead of harvests), and a task takes only what was
queued when it started (writes that come while it runs queue the next task)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from browser.catalog.models import Model, Source, Unit
from browser.labels.services import label_save
from browser.search.models import PendingEmbedding, UnitEmbedding
from browser.search.services import EMBED_TASK, embed_task_queued, embed_task_started


@pytest.fixture
def units(db: None) -> list[Unit]:
    model = Model.objects.create(name="embed-task", kind=Model.Kind.TOY, architecture="toy", location="toy",
                                 n_layers=1, d_model=8, d_mlp=4)
    source = Source.objects.create(model=model, name="L0", hook_point="blocks.0.mlp.hook_post", layer=0,
                                   kind=Source.Kind.NEURONS, n_units=4)
    return [Unit.objects.create(source=source, index=i, layer=0, kind="neurons") for i in range(4)]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    from workers.celery import app

    names: list[str] = []
    monkeypatch.setattr(app, "send_task", lambda name, *a, **k: names.append(name))
    embed_task_started()  # no flag left by another test
    yield names
    embed_task_started()


@pytest.mark.django_db(transaction=True)  # each write commits, as in the web process
def test_a_burst_of_label_writes_queues_one_task(cast: Any, units: list[Unit], sent: list[str]) -> None:
    for i, unit in enumerate(units):  # four writes, four transactions
        label_save(unit=unit, user=cast.owner, text=f"label {i}")
    assert sent == [EMBED_TASK]
    assert embed_task_queued()
    assert PendingEmbedding.objects.count() == 4  # every unit is queued all the same
    embed_task_started()  # the worker took the task: the next write wakes it again
    label_save(unit=units[0], user=cast.owner, text="label 0, edited")
    assert sent == [EMBED_TASK, EMBED_TASK]


@pytest.mark.django_db(transaction=True)
def test_a_broker_failure_leaves_no_flag(cast: Any, units: list[Unit], monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.celery import app

    embed_task_started()

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", down)
    label_save(unit=units[0], user=cast.owner, text="written while the broker is down")  # robust: it commits
    assert not embed_task_queued()  # so the next write tries to send again
    assert PendingEmbedding.objects.filter(unit=units[0]).exists()


def test_the_task_takes_only_what_was_queued_before_it_started(cast: Any, units: list[Unit],
                                                               sent: list[str]) -> None:
    from django.db import connection

    from workers.pipeline.search import embed_pending

    label_save(unit=units[0], user=cast.owner, text="French words and phrases")
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        start = cursor.fetchone()[0]
    label_save(unit=units[1], user=cast.owner, text="numbers in dates")  # came while it ran
    assert embed_pending(before=start) == 1
    assert list(UnitEmbedding.objects.values_list("unit_id", flat=True)) == [units[0].pk]
    assert list(PendingEmbedding.objects.values_list("unit_id", flat=True)) == [units[1].pk]
    assert embed_pending() == 1  # the next task
    assert PendingEmbedding.objects.count() == 0
