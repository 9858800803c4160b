from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from browser.accounts import access

# Reachable without signing in even when anonymous reading is off. The API answers for itself
# (with a 401 in the API's error format), so it is let through here.
OPEN_PREFIXES = ("/accounts/login/", "/static/", "/api/", "/admin/", "/healthz")


class ReadAccessMiddleware:
    """Sends anonymous visitors to the sign-in page when ``BROWSER_ANONYMOUS_READ`` is off."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(OPEN_PREFIXES) and not access.can_read(request.user):
            return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
        return self.get_response(request)
