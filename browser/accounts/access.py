"""The one access layer: every permission rule of the site and the API is a function here.

Roles are ordered: viewer < annotator < curator < admin. A superuser is an admin. Anonymous
visitors may read when ``BROWSER_ANONYMOUS_READ`` is on, and never write.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from browser.accounts.models import Role

RANK = {Role.VIEWER: 0, Role.ANNOTATOR: 1, Role.CURATOR: 2, Role.ADMIN: 3}


def role_of(user: Any) -> str | None:
    """The user's role, or None for an anonymous or inactive user."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.ADMIN
    account = getattr(user, "account", None)
    return account.role if account is not None else Role.VIEWER


def has_role(user: Any, role: str) -> bool:
    actual = role_of(user)
    return actual is not None and RANK[Role(actual)] >= RANK[Role(role)]


def can_read(user: Any) -> bool:
    return role_of(user) is not None or bool(settings.BROWSER_ANONYMOUS_READ)


def can_compute(user: Any) -> bool:
    """Make a worker compute on request (try your own text, steering): any signed-in user."""
    return role_of(user) is not None


def can_label(user: Any) -> bool:
    return has_role(user, Role.ANNOTATOR)


def can_moderate(user: Any) -> bool:
    """Edit or delete other people's labels."""
    return has_role(user, Role.CURATOR)


def can_edit_label(user: Any, label: Any) -> bool:
    if label.author_id == getattr(user, "id", None):
        return can_label(user)
    return can_moderate(user)


def can_curate(user: Any) -> bool:
    """Register models, create runs, import corpora, SAEs and labels in bulk, cancel any job."""
    return has_role(user, Role.CURATOR)


def can_cancel_job(user: Any, job: Any) -> bool:
    if job.created_by_id is not None and job.created_by_id == getattr(user, "id", None):
        return has_role(user, Role.ANNOTATOR)
    return can_curate(user)


def can_see_job_details(user: Any, job: Any) -> bool:
    """A job's error (a traceback) and log name paths and internals: its creator and curators only."""
    if job is not None and job.created_by_id is not None and job.created_by_id == getattr(user, "id", None):
        return role_of(user) is not None
    return can_curate(user)


def can_manage_tokens(user: Any, owner: Any) -> bool:
    return role_of(user) is not None and (user.pk == owner.pk or has_role(user, Role.ADMIN))
