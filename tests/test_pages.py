from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.test import Client

from browser.catalog.models import Model


def test_home_empty(client: Client, db: None) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert b"No corpus yet" in response.content


def test_home_lists_corpora(client: Client, minilm: Model, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Once more unto the breach, dear friends.")
    call_command("import_corpus", str(tmp_path / "a.txt"), name="breach", inline=True)
    response = client.get("/")
    assert b"breach" in response.content and b"minilm-l6" in response.content


def test_admin_login_page(client: Client, db: None) -> None:
    assert client.get("/admin/login/").status_code == 200
