from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from browser.accounts.models import ApiToken


def token_list(*, owner: Any) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=owner).order_by("-created")
