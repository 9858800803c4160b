"""Steering requests on the web side (no worker here): who may steer, and every bad request refused
with a message that says what to change, before anything is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from browser.catalog.models import Source
from browser.catalog.services import source_get_or_create, units_ensure
from browser.catalog.steer import MAX_UNITS, parse_spec, steer_request, steer_request_from_query
from fixtures.tiny import build_tiny_bert
from fixtures.tiny_llama import build_tiny_llama
from tests.conftest import Cast
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow
HOOK = "blocks.1.mlp.hook_post"


def _units(name: str, location: Path) -> Source:
    model = model_register(location=str(location), name=name)
    source = source_get_or_create(model=model, name=HOOK, hook_point=HOOK, layer=1, kind="neurons", n_units=48)
    units_ensure(source=source)
    return source


@pytest.fixture
def data(db: None, tmp_path: Path, cast: Cast) -> None:
    _units("tiny-llama", build_tiny_llama(tmp_path / "llama"))
    _units("tiny-bert", build_tiny_bert(tmp_path / "bert"))
    for user in (cast.owner, cast.outsider):
        cache.delete(f"throttle_compute_user-{user.pk}")


def _post(client: Any, **body: Any) -> Any:
    request = {"prompt": "Now is the winter", "units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "steer", "value": 4}],
               **body}
    return client.post("/api/v1/steer/", request, format="json")


def test_anonymous_may_not_steer(data: None, client: Client) -> None:
    assert _post(client).status_code == 401
    page = client.get("/steer/", {"prompt": "Now", "unit": f"tiny-llama/{HOOK}/3:steer:4"})
    assert page.status_code == 403 and b"Sign in" in page.content
    assert b"Sign in</a> to steer" in client.get(f"/u/tiny-llama/{HOOK}/3/").content


@pytest.mark.parametrize("body,message", [
    ({"units": [{"unit": f"tiny-llama/{HOOK}/99999", "op": "zero"}]}, "unknown unit"),
    ({"units": [{"unit": "nope/x/1", "op": "zero"}]}, "unknown unit"),
    ({"units": [{"unit": f"tiny-bert/{HOOK}/3", "op": "zero"}]}, "not a causal language model"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "steer", "value": "NaN"}]}, "finite"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "steer", "value": 1e9}]}, "beyond"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "scale", "value": 500}]}, "beyond"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "steer"}]}, "needs a value"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "explode", "value": 1}]}, "unknown intervention"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "mean"}]}, "no harvested mean"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/{i}", "op": "zero"} for i in range(MAX_UNITS + 1)]}, "at most 8"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "zero"}] * 2}, "named twice"),
    ({"units": []}, "at least one unit"),
    ({"prompt": "x" * 1001}, "at most 1000"),
    ({"prompt": "   "}, "prompt"),
    ({"n_tokens": 65}, "n_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"units": [{"unit": f"tiny-llama/{HOOK}/3", "op": "zero", "positions": [-1]}]}, "positions"),
])
def test_bad_requests_are_refused_with_a_clear_message(data: None, cast: Cast, body: dict[str, Any],
                                                       message: str) -> None:
    response = _post(cast.client("outsider"), **body)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]["message"]


def test_the_page_refuses_the_same_way(data: None, client: Client, cast: Cast) -> None:
    client.force_login(cast.outsider)
    page = client.get("/steer/", {"prompt": "Now", "unit": f"tiny-bert/{HOOK}/3:zero"})
    assert page.status_code == 422 and b"not a causal language model" in page.content
    html = client.get(f"/u/tiny-bert/{HOOK}/3/").content.decode()
    assert "(encoder) is not a causal language model" in html and 'id="steer-prompt"' not in html
    assert 'id="steer-prompt"' in client.get(f"/u/tiny-llama/{HOOK}/3/").content.decode()


def test_a_valid_request_reaches_the_worker_check(data: None, cast: Cast) -> None:
    response = _post(cast.client("outsider"))  # no worker runs in this test
    assert response.status_code == 422 and "No worker is running" in response.json()["error"]["message"]


def test_a_request_round_trips_through_its_query_string(data: None) -> None:
    edits = [parse_spec(f"tiny-llama/{HOOK}/3:steer:-2.5@1,4"), parse_spec(f"tiny-llama/{HOOK}/5:zero")]
    request = steer_request(prompt="To be, or not", edits=edits, n_tokens=7, temperature=0.5, seed=3)
    from urllib.parse import parse_qs

    q = parse_qs(request.query())
    again = steer_request_from_query({k: v[0] for k, v in q.items()}, q["unit"])
    assert again == request and again.task_request() == request.task_request()
    assert request.task_request()["units"][0] == {"unit_id": edits[0].unit.pk, "op": "steer", "value": -2.5,
                                                  "positions": [1, 4]}
