from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command

from tests.catalog.builders import BrowserData, build


@pytest.fixture(scope="module")
def browser_data(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[BrowserData]:
    """One harvest for the whole module (committed); every test still runs in its own transaction,
    and the tables are emptied afterwards so other modules start from nothing."""
    with django_db_blocker.unblock():
        data = build(tmp_path_factory.mktemp("browser"))
        yield data
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def data(browser_data: BrowserData, db: None) -> BrowserData:
    return browser_data
