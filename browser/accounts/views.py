from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from browser.accounts import access
from browser.accounts.models import ApiToken
from browser.accounts.selectors import token_list
from browser.accounts.services import token_create, token_revoke
from browser.accounts.throttle import sign_in_failed, sign_in_succeeded, sign_in_wait_s


class ThrottledLoginView(auth_views.LoginView):
    """Django's sign-in, throttled per username and client address (browser/accounts/throttle.py)."""

    template_name = "accounts/login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        wait = sign_in_wait_s(request, username)
        if wait > 0:
            form = self.get_form()
            form.add_error(None, f"Too many failed sign-ins for this name; try again in {wait / 60:.0f} min.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        response = super().post(request, *args, **kwargs)
        if request.user.is_authenticated:
            sign_in_succeeded(request, username)
        else:
            sign_in_failed(request, username)
        return response


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    created = None
    if request.method == "POST":
        _, created = token_create(user=request.user, owner=request.user, name=request.POST.get("name", ""))
    context = {"tokens": token_list(owner=request.user), "created": created,
               "role": access.role_of(request.user)}
    return render(request, "accounts/tokens.html", context)


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=pk)
    token_revoke(user=request.user, token=token)
    return redirect("tokens")
