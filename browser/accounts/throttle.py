"""Sign-in throttle: failed attempts counted per (username, client address) in the cache, at most
``BROWSER_SIGN_IN_RATE`` (DRF rate syntax, e.g. ``10/hour``) within the window; a success clears it.
Keyed on both, so a guesser cannot lock a person out from elsewhere and one address cannot try many
passwords on one name; REMOTE_ADDR is the client as the WSGI server sees it (set it from a trusted
proxy's header there, not here)."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def sign_in_rate() -> tuple[int, int]:
    """(attempts, window in seconds) from BROWSER_SIGN_IN_RATE."""
    count, _, period = str(settings.BROWSER_SIGN_IN_RATE).partition("/")
    return int(count), PERIODS[period[:1]]


def _key(request: HttpRequest, username: str) -> str:
    return f"sign-in:{username.strip().lower()[:150]}:{request.META.get('REMOTE_ADDR', '')}"


def _recent(key: str, window: int, now: float) -> list[float]:
    return [t for t in cache.get(key, []) if t > now - window]


def sign_in_wait_s(request: HttpRequest, username: str) -> float:
    """Seconds until this name may be tried again from this address; 0 when it may now."""
    limit, window = sign_in_rate()
    now = time.time()
    recent = _recent(_key(request, username), window, now)
    return max(0.0, recent[-limit] + window - now) if len(recent) >= limit else 0.0


def sign_in_failed(request: HttpRequest, username: str) -> None:
    limit, window = sign_in_rate()
    key, now = _key(request, username), time.time()
    cache.set(key, [*_recent(key, window, now), now][-limit:], timeout=window)


def sign_in_succeeded(request: HttpRequest, username: str) -> None:
    cache.delete(_key(request, username))
