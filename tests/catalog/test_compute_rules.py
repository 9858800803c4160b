"""Try your own text makes a worker compute, so it follows the compute rules (browser/api/compute.py):
anonymous visitors are refused (401 on the API, as docs/api.md says for missing credentials; the
page hides the form behind a sign-in link), and each user is throttled at BROWSER_COMPUTE_RATE."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from browser.catalog.models import Source
from browser.catalog.services import source_get_or_create, units_ensure
from fixtures.tiny import build_tiny_bert
from tests.conftest import Cast
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow


HOOK = "blocks.1.mlp.hook_post"


@pytest.fixture
def data(db: None, tmp_path: Any) -> Source:
    """A registered tiny model with units (no harvest: probing needs none)."""
    model = model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")
    source = source_get_or_create(model=model, name=HOOK, hook_point=HOOK, layer=1, kind="neurons", n_units=48)
    units_ensure(source=source)
    return source


def _url(data: Source, page: bool = False) -> str:
    return f"/{'u' if page else 'api/v1/units'}/tiny/{HOOK}/0/probe/"


@pytest.fixture
def fresh_throttle(cast: Cast) -> None:
    """Throttle histories live in Redis and outlive a test database (whose ids restart at 1)."""
    for user in (cast.owner, cast.outsider):
        cache.delete(f"throttle_compute_user-{user.pk}")


def test_anonymous_may_not_probe(data: Source, client: Client) -> None:
    response = client.post(_url(data), {"text": "hello"}, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401
    page = client.post(_url(data, page=True), {"text": "hello"})
    assert page.status_code == 403 and b"Sign in" in page.content


def test_the_page_offers_anonymous_visitors_a_sign_in_not_the_form(data: Source, client: Client,
                                                                   cast: Cast) -> None:
    html = client.get(f"/u/tiny/{HOOK}/0/").content.decode()
    section = html[html.index('class="probe"'):]
    section = section[:section.index("</section>")]
    assert "<textarea" not in section and "/accounts/login/?next=" in section
    client.force_login(cast.outsider)
    html = client.get(f"/u/tiny/{HOOK}/0/").content.decode()
    assert 'id="probe-text"' in html


def test_probe_is_throttled_per_user(data: Source, cast: Cast, settings: Any, fresh_throttle: None) -> None:
    settings.BROWSER_COMPUTE_RATE = "2/min"
    api = cast.client("outsider")  # a viewer may probe: reading, not writing, but it costs a worker
    codes = [api.post(_url(data), {"text": "hello"}, format="json").status_code for _ in range(3)]
    assert codes[:2] == [422, 422]  # no worker in this test: refused after the checks, not throttled
    assert codes[2] == 429
    page = Client()
    page.force_login(cast.outsider)
    assert page.post(_url(data, page=True), {"text": "hello"}).status_code == 429  # one budget for both
    other = cast.client("owner")
    assert other.post(_url(data), {"text": "hello"}, format="json").status_code == 422
