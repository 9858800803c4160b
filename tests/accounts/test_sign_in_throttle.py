"""Sign-in attempts are throttled per username and client address (BROWSER_SIGN_IN_RATE): after the
allowed failures even the right password is refused (429) until the window passes; other names and
other addresses are not affected, and a successful sign-in clears the count."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from browser.accounts.services import user_create

PASSWORD = "the-right-password-1"


@pytest.fixture
def people(db: None, settings: Any) -> None:
    settings.BROWSER_SIGN_IN_RATE = "3/hour"
    for name in ("target", "bystander"):
        user_create(username=name, password=PASSWORD, role="viewer")
        for ip in ("10.0.0.1", "10.0.0.2"):
            cache.delete(f"sign-in:{name}:{ip}")


def _sign_in(username: str, password: str, ip: str = "10.0.0.1") -> int:
    return Client(REMOTE_ADDR=ip).post("/accounts/login/", {"username": username, "password": password}).status_code


def test_failed_sign_ins_are_throttled_per_username_and_address(people: None) -> None:
    assert [_sign_in("target", "wrong") for _ in range(3)] == [200, 200, 200]  # the form again, with an error
    assert _sign_in("target", PASSWORD) == 429  # the right password too, once over the limit
    assert _sign_in("TARGET", "wrong") == 429  # usernames compare as Django's do: case-insensitively here
    assert _sign_in("bystander", PASSWORD) == 302
    assert _sign_in("target", PASSWORD, ip="10.0.0.2") == 302


def test_a_successful_sign_in_clears_the_count(people: None) -> None:
    assert [_sign_in("target", "wrong") for _ in range(2)] == [200, 200]
    assert _sign_in("target", PASSWORD) == 302
    assert [_sign_in("target", "wrong") for _ in range(3)] == [200, 200, 200]
    assert _sign_in("target", PASSWORD) == 429
