"""Writes of users, roles and API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from browser.accounts import access
from browser.accounts.models import Account, ApiToken, Role

TOKEN_PREFIX = "nb_"
# Machine authors' usernames start with this. A ':' fails Django's username validator, so no sign-up
# (user_create, the admin, the login form) can take one, and no explainer can borrow a person's name.
MACHINE_PREFIX = "machine:"


def token_digest(raw: str) -> str:
    # Tokens are 256 random bits, so an unsalted fast hash is enough to make a stolen table useless.
    return hashlib.sha256(raw.encode()).hexdigest()


def user_set_role(*, user: Any, role: str) -> Account:
    if role not in Role.values:
        raise ValidationError(f"unknown role {role!r} (roles: {', '.join(Role.values)})")
    account, _ = Account.objects.update_or_create(user=user, defaults={"role": role})
    return account


@transaction.atomic
def user_create(*, username: str, password: str | None, role: str = Role.VIEWER, email: str = "",
                superuser: bool = False) -> Any:
    """A person's account (``superuser`` also opens /admin/: the demo's user)."""
    User = get_user_model()
    if username.startswith(MACHINE_PREFIX):
        raise ValidationError(f"names starting with {MACHINE_PREFIX!r} are kept for machine authors")
    if User.objects.filter(username=username).exists():
        raise ValidationError(f"a user named {username!r} exists")
    user = User(username=username, email=email, is_staff=superuser, is_superuser=superuser)
    user.full_clean(exclude=["password"])
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    user_set_role(user=user, role=role)
    return user


@transaction.atomic
def machine_user(*, name: str) -> Any:
    """The machine author (an annotator with no password, ``Account.machine``) that writes an
    explainer's labels, in the machine namespace: never a person's account, whatever ``name`` is."""
    username = MACHINE_PREFIX + re.sub(r"[^\w.@+-]+", "-", name)[:150 - len(MACHINE_PREFIX)]
    user, created = get_user_model().objects.select_related("account").get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    account = getattr(user, "account", None)
    if account is None or not account.machine or account.role != Role.ANNOTATOR:
        Account.objects.update_or_create(user=user, defaults={"role": Role.ANNOTATOR, "machine": True})
    return user


def token_create(*, user: Any, owner: Any, name: str) -> tuple[ApiToken, str]:
    """A new token for ``owner``; returns the row and the raw token (shown once, never stored)."""
    if not access.can_manage_tokens(user, owner):
        raise PermissionDenied("you may only create tokens for yourself")
    name = name.strip()[:100] or "token"
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=owner, name=name, prefix=raw[:10], digest=token_digest(raw))
    return token, raw


def token_revoke(*, user: Any, token: ApiToken) -> ApiToken:
    if not access.can_manage_tokens(user, token.user):
        raise PermissionDenied("you may only revoke your own tokens")
    if token.revoked is None:
        token.revoked = timezone.now()
        token.save(update_fields=["revoked"])
    return token


def token_authenticate(raw: str) -> Any | None:
    """The active user owning this unrevoked token, or None."""
    # The user's account (its role) in the same query: every permission check reads it.
    token = (ApiToken.objects.select_related("user", "user__account")
             .filter(digest=token_digest(raw), revoked__isnull=True).first())
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)  # at most one write a minute
    return token.user
