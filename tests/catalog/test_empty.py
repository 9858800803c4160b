"""Pages and their JSON twins with nothing harvested: empty states, not errors; 404s for unknown ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client

from browser.catalog.models import Model


def test_home_empty(client: Client, db: None) -> None:
    html = client.get("/").content.decode()
    assert "No corpus yet" in html and "No model registered yet" in html and "No source harvested yet" in html
    assert client.get("/api/v1/overview/").json() == {"models": [], "corpora": [], "sources": [], "runs": [],
                                                      "jobs": []}


def test_home_lists_corpora(client: Client, minilm: Model, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Once more unto the breach, dear friends.")
    call_command("import_corpus", str(tmp_path / "a.txt"), name="breach", inline=True)
    response = client.get("/")
    assert b"breach" in response.content and b"minilm-l6" in response.content
    jobs = client.get("/api/v1/jobs/").json()["results"]
    assert [(j["status"], j["status_display"], j["percent"]) for j in jobs] == [("succeeded", "succeeded", 100.0)]
    assert client.get("/api/v1/overview/").json()["jobs"] == jobs  # one serializer, one source of progress
    old = client.get("/api/v1/overview/jobs/?page_size=5")  # the home page's old poll URL leads to the jobs API
    assert (old.status_code, old["Location"]) == (301, "/api/v1/jobs/?page_size=5")


def test_unit_lists_empty(client: Client, db: None) -> None:
    assert b"No unit matches these filters" in client.get("/units/").content
    assert client.get("/api/v1/units/").json() == {"next": None, "previous": None, "results": []}
    assert client.get("/api/v1/sources/").json() == []
    assert client.get("/api/v1/models/").json() == []


def test_unharvested_source_and_unit(client: Client, minilm: Model) -> None:
    from browser.catalog.services import source_get_or_create, units_ensure

    source = source_get_or_create(model=minilm, name="blocks.0.mlp.hook_post", hook_point="blocks.0.mlp.hook_post",
                                  layer=0, kind="neurons", n_units=1536)
    units_ensure(source=source)
    assert b"No unit matches" not in client.get("/s/minilm-l6/blocks.0.mlp.hook_post/").content
    html = client.get("/u/minilm-l6/blocks.0.mlp.hook_post/3/").content.decode()
    assert "This unit has not been harvested yet." in html
    body = client.get("/api/v1/units/minilm-l6/blocks.0.mlp.hook_post/3/").json()
    assert body["stats"] is None and body["top"] == [] and body["id"] == "minilm-l6/blocks.0.mlp.hook_post/3"
    assert b"No related units recorded" in client.get("/compare/?a=minilm-l6/blocks.0.mlp.hook_post/3").content


@pytest.mark.parametrize("url", [
    "/s/nope/x/", "/u/nope/x/1/", "/m/nope/toy/", "/compare/?a=nope/x/1", "/compare/?a=garbage",
    "/api/v1/sources/nope/x/", "/api/v1/units/nope/x/1/", "/api/v1/models/nope/toy/", "/api/v1/compare/?a=nope/x/1",
])
def test_unknown_ids_are_404(client: Client, db: None, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 404
    if url.startswith("/api/"):
        assert response.json()["error"]["status"] == 404


def test_toy_page_empty_state_and_non_toy(client: Client, minilm: Model) -> None:
    Model.objects.create(name="toy-empty", kind="toy", architecture="toy", location="toy", n_layers=1, d_model=2,
                         d_mlp=5)
    html = client.get("/m/toy-empty/toy/").content.decode()
    assert "No weights stored" in html and "No feature dimensionality computed yet" in html
    assert client.get("/api/v1/models/toy-empty/toy/").json()["gram"] is None
    assert client.get("/m/minilm-l6/toy/").status_code == 404


def test_admin_login_page(client: Client, db: None) -> None:
    assert client.get("/admin/login/").status_code == 200
