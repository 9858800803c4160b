"""Typed readers of environment variables.

Every setting of the product is read through one of these helpers, so that a bad value is a
clear error when the process starts rather than a stack trace in the middle of a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name}={value} is above the maximum {maximum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed PostgreSQL URL: ``postgres://user:password@host:port/name``.

    A socket directory may be given as ``?host=/path`` (as libpq does).
    """

    name: str
    user: str
    password: str
    host: str
    port: int | None

    def django(self) -> dict[str, object]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.name,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": str(self.port or ""),
            "CONN_MAX_AGE": 0,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": {"connect_timeout": 10},
        }


def parse_database_url(name: str, raw: str) -> DatabaseUrl:
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a valid URL: {exc}") from None
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"{name} must start with postgres:// or postgresql:// (got {parts.scheme or 'no scheme'!r})"
        )
    db_name = unquote(parts.path.lstrip("/"))
    if not db_name:
        raise ImproperlyConfigured(f"{name} names no database: add /NAME after the host")
    query_host = parse_qs(parts.query).get("host", [""])[0]
    host = query_host or unquote(parts.hostname or "")
    if not host:
        raise ImproperlyConfigured(f"{name} names no host (use @HOST or ?host=/socket/dir)")
    return DatabaseUrl(
        name=db_name,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        host=host,
        port=port,
    )


def env_database_url(name: str) -> DatabaseUrl | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    return parse_database_url(name, raw)


def env_redis_url(name: str) -> str | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not a valid URL: {exc}") from None
    if parts.scheme not in {"redis", "rediss", "redis+socket", "unix"}:
        raise ImproperlyConfigured(
            f"{name} must start with redis://, rediss:// or redis+socket:// (got {parts.scheme or 'no scheme'!r})"
        )
    return raw
