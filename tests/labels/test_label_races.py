"""The unit's denormalised label fields (count, search text) under truly concurrent writers: two
database connections, the second forced to wait on the first's lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, connections, transaction

from browser.catalog.models import Unit
from browser.labels.services import label_save
from tests.conftest import Cast


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees one snapshot
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        return int(cursor.fetchone()[0])


def _race(first: Callable[[], object], second: Callable[[], object]) -> None:
    """Run ``first`` in a transaction that stays open until ``second`` (on another connection)
    is blocked on a lock it holds, then commit and let ``second`` finish."""
    started, errors = threading.Event(), []

    def in_thread(work: Callable[[], object], signal: threading.Event | None) -> None:
        try:
            if signal is not None:
                signal.wait(10)
            work()
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    other = threading.Thread(target=in_thread, args=(second, started))
    other.start()
    with transaction.atomic():
        first()
        started.set()
        deadline = time.monotonic() + 10
        while _waiting_on_a_lock() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _waiting_on_a_lock() >= 1, f"the second writer never waited: the race did not happen {errors}"
    other.join(20)
    assert not other.is_alive() and not errors, errors


@pytest.mark.django_db(transaction=True)
def test_two_authors_labelling_one_unit_at_once_both_reach_its_search_text(cast: Cast, units: list[Unit]) -> None:
    unit = units[0]
    _race(lambda: label_save(unit=unit, user=cast.owner, text="heart and blood"),
          lambda: label_save(unit=unit, user=cast.collaborator, text="death and water"))
    unit.refresh_from_db()
    assert unit.label_count == 2
    assert "heart and blood" in unit.search_text and "death and water" in unit.search_text
    assert Unit.objects.filter(pk=unit.pk, search="heart").exists()
