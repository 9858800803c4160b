"""Sign-in, roles, API tokens (hashed, revocable), anonymous reading, production settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import Client
from rest_framework.test import APIClient

from browser.accounts.models import ApiToken
from browser.accounts.services import token_create, token_revoke, user_create
from tests.conftest import ROOT, project_env


@pytest.fixture
def alice(db: None) -> object:
    return user_create(username="alice", password="alice-pass-123", role="annotator")


def test_tokens_are_stored_hashed_and_revocable(alice: object) -> None:
    token, raw = token_create(user=alice, owner=alice, name="laptop")
    assert raw.startswith("nb_") and raw not in (token.digest, token.prefix) and len(raw) > 40
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/labels/").status_code == 200
    token_revoke(user=alice, token=token)
    denied = api.get("/api/v1/labels/")
    assert denied.status_code == 401 and denied.json()["error"]["message"] == "invalid or revoked token"
    api.credentials(HTTP_AUTHORIZATION="Bearer")
    assert api.get("/api/v1/labels/").status_code == 401


def test_token_page_shows_a_new_token_once(alice: object, client: Client) -> None:
    assert client.get("/accounts/tokens/").status_code == 302
    client.login(username="alice", password="alice-pass-123")
    page = client.post("/accounts/tokens/", {"name": "<b>ci</b>"}).content.decode()
    token = ApiToken.objects.get()
    assert 'id="new-token"' in page and "&lt;b&gt;ci&lt;/b&gt;" in page
    assert token.prefix in page and token.prefix in client.get("/accounts/tokens/").content.decode()
    assert 'id="new-token"' not in client.get("/accounts/tokens/").content.decode()
    client.post(f"/accounts/tokens/{token.pk}/revoke/")
    assert ApiToken.objects.get().revoked is not None


def test_others_cannot_revoke_my_token(alice: object, client: Client) -> None:
    token, _ = token_create(user=alice, owner=alice, name="x")
    user_create(username="bob", password="bob-pass-123", role="curator")
    client.login(username="bob", password="bob-pass-123")
    assert client.post(f"/accounts/tokens/{token.pk}/revoke/").status_code == 403
    assert ApiToken.objects.get().revoked is None


def test_sign_in_page(alice: object, client: Client) -> None:
    assert b"Sign in" in client.get("/accounts/login/").content
    wrong = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert b"did not match" in wrong.content
    right = client.post("/accounts/login/", {"username": "alice", "password": "alice-pass-123"})
    assert right.status_code == 302


def test_anonymous_reading_can_be_turned_off(alice: object, client: Client, settings: object) -> None:
    settings.BROWSER_ANONYMOUS_READ = False  # type: ignore[attr-defined]
    assert client.get("/").status_code == 302 and "/accounts/login/" in client.get("/")["Location"]
    denied = APIClient().get("/api/v1/labels/")
    assert denied.status_code == 401 and denied.json()["error"]["status"] == 401
    client.login(username="alice", password="alice-pass-123")
    assert client.get("/").status_code == 200


def test_check_deploy_is_clean_with_production_settings(db: None) -> None:
    env = project_env(BROWSER_PRODUCTION="1", BROWSER_SECRET_KEY="k" * 20 + "-Z9!x" * 10,
                      BROWSER_ALLOWED_HOSTS="browser.example.org")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_user_command(db: None, tmp_path: object) -> None:
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from browser.accounts import access

    call_command("user", "create", "carol", "--role", "annotator", "--password", "-", stdout=io.StringIO())
    out = io.StringIO()
    call_command("user", "token", "carol", stdout=out)
    raw = out.getvalue().strip()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/labels/").status_code == 200
    call_command("user", "role", "carol", "curator", stdout=io.StringIO())
    from django.contrib.auth import get_user_model

    assert access.can_curate(get_user_model().objects.get(username="carol"))
    call_command("user", "revoke", raw[:10], stdout=io.StringIO())
    assert api.get("/api/v1/labels/").status_code == 401
    with pytest.raises(CommandError, match="exists"):
        call_command("user", "create", "carol", "--password", "-")
    with pytest.raises(CommandError, match="no user"):
        call_command("user", "token", "nobody")
