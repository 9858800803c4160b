"""The rules for anything that makes a worker compute on a web request (try your own text, steering,
graphs): a signed-in user, a throttle, a task expiry, a bounded wait. Import these, do not copy them.

- API views: ``permission_classes = [CanCompute]`` and ``throttle_classes = [ComputeThrottle]``.
- HTML views: ``compute_refusal(request)`` answers the same two questions for a Django request.
- Both: ``compute_call(task_name, args)`` checks a worker is up, queues the task with
  ``expires=compute_expires_s()`` (so a request nobody waits for any more is discarded by the worker
  instead of run) and waits at most ``compute_wait_s()`` seconds for its result.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.http import HttpRequest
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from browser.accounts import access

SCOPE = "compute"


class ComputeError(ValueError):
    """The work cannot be done now (no worker, no answer in time, the task's own error)."""


def compute_wait_s() -> float:
    """How long a web request waits for its task (a cold worker loads the model first)."""
    return float(settings.BROWSER_COMPUTE_WAIT_S)


def compute_expires_s() -> float:
    """A queued compute task not started by then is discarded by the worker (never run)."""
    return float(settings.BROWSER_COMPUTE_EXPIRES_S)


class CanCompute(BasePermission):
    """Only signed-in users (session or token) make workers compute; anonymous gets 401."""

    message = "sign in (or send an API token) to make a worker compute"

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.can_compute(request.user)


class ComputeThrottle(SimpleRateThrottle):
    """Per user (per client address for anyone else), at ``BROWSER_COMPUTE_RATE``; the page's form and
    the API share one budget."""

    scope = SCOPE

    def get_rate(self) -> str:
        return str(settings.BROWSER_COMPUTE_RATE)

    def get_cache_key(self, request: Any, view: Any) -> str:
        user = request.user
        ident = f"user-{user.pk}" if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


def compute_refusal(request: HttpRequest) -> tuple[int, str] | None:
    """For HTML views: ``None`` when the request may compute, else (status, message)."""
    if not access.can_compute(request.user):
        return 403, "Sign in to make a worker compute."
    throttle = ComputeThrottle()
    if not throttle.allow_request(request, None):  # type: ignore[arg-type]
        return 429, f"Too many requests; try again in {throttle.wait() or 1:.0f} s."
    return None


def compute_send(task_name: str, args: list[Any]) -> Any:
    """Queue one compute task with its expiry; returns Celery's AsyncResult."""
    from workers.celery import app

    expires = datetime.now(UTC) + timedelta(seconds=compute_expires_s())
    return app.send_task(task_name, args=args, expires=expires)


def compute_call(task_name: str, args: list[Any], *, wait_s: float | None = None) -> Any:
    """Queue ``task_name(*args)`` on its queue (the routes in workers/celery.py), wait for its result."""
    from workers.celery import ROUTES
    from workers.presence import workers_alive

    if not workers_alive(ROUTES.get(task_name, "default")):
        raise ComputeError("No worker is running, so nothing can compute this now. "
                           "Start one with `celery -A workers worker -Q gpu,default --pool solo`.")
    wait = compute_wait_s() if wait_s is None else wait_s
    result = compute_send(task_name, args)
    try:
        return result.get(timeout=wait)
    except CeleryTimeout:
        raise ComputeError(f"No answer within {wait:.0f} s: the workers are busy (or loading the model). "
                           "Try again in a moment.") from None
    except Exception as exc:  # the task's own error, re-raised by Celery
        raise ComputeError(f"The worker could not compute it: {exc}") from None
    finally:
        result.forget()
