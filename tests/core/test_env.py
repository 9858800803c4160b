from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from browser.core.env import env_bool, env_int, env_redis_url, parse_database_url
from tests.conftest import ROOT, project_env


def test_database_url_parsing() -> None:
    url = parse_database_url("DATABASE_URL", "postgresql://alice:s%40cret@db.example:6543/things")
    assert (url.user, url.password, url.host, url.port, url.name) == ("alice", "s@cret", "db.example", 6543, "things")
    socket = parse_database_url("DATABASE_URL", "postgres://bob@/things?host=/run/postgresql")
    assert socket.host == "/run/postgresql"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://u@h/db", "must start with postgres://"),
        ("postgresql://u@host", "names no database"),
        ("postgresql://u@host:notaport/db", "not a valid URL"),
        ("postgresql:///db", "names no host"),
    ],
)
def test_bad_database_urls_are_refused(raw: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_database_url("DATABASE_URL", raw)


def test_typed_helpers_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="not a boolean"):
        env_bool("X_BOOL", False)
    monkeypatch.setenv("X_INT", "12x")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("X_INT", 1)
    monkeypatch.setenv("X_INT", "-5")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env_int("X_INT", 1, minimum=0)
    monkeypatch.setenv("X_REDIS", "http://localhost")
    with pytest.raises(ImproperlyConfigured, match="must start with redis://"):
        env_redis_url("X_REDIS")


def test_bad_database_url_is_a_clear_error_at_start() -> None:
    env = project_env(DATABASE_URL="mysql://root@localhost/x")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DATABASE_URL must start with postgres:// or postgresql://" in result.stderr
