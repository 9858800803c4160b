from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from browser.accounts import access
from browser.accounts.models import ApiToken
from browser.accounts.selectors import token_list
from browser.accounts.services import token_create, token_revoke


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
