"""Schemathesis against the OpenAPI schema: no request, however odd, gets a server error."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings

from browser.accounts.services import token_create, user_create
from browser.catalog.models import Source
from browser.catalog.services import model_create, source_get_or_create, units_ensure
from browser.labels.services import label_save

pytestmark = pytest.mark.slow


@pytest.fixture
def api_schema(transactional_db: None) -> Any:
    return schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())


@pytest.fixture
def curator_token(transactional_db: None) -> str:
    user = user_create(username="fuzz", password=None, role="curator")
    model = model_create(name="fz", kind="encoder", architecture="bert", location="-", n_layers=1, d_model=2,
                         d_mlp=3, vocab_size=0, tokenizer=None)
    source = source_get_or_create(model=model, name="blocks.0.mlp.hook_post", hook_point="blocks.0.mlp.hook_post",
                                  layer=0, kind=Source.Kind.NEURONS, n_units=3)
    units_ensure(source=source)
    label_save(unit=source.units.get(index=0), user=user, text="seed label")
    return token_create(user=user, owner=user, name="fuzz")[1]


def _no_worker(response: Any) -> bool:
    """503 "no_worker" is the documented answer to a valid compute request when no worker runs
    (none does here), not a server error."""
    try:
        return response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
    except (ValueError, KeyError, TypeError):
        return False


def test_no_server_error(api_schema: Any, curator_token: str) -> None:
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {curator_token}"})
            if response.status_code >= 500 and not _no_worker(response):
                failures.append(f"{case.method} {case.formatted_path} {case.query}: {response.status_code}")

        fuzz()
    assert not failures, failures
