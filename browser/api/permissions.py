"""DRF permission classes: each one asks the access layer (``browser.accounts.access``)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from browser.accounts import access


class CanRead(BasePermission):
    message = "sign in (or send an API token) to read"

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.can_read(request.user)


class ReadOrLabel(BasePermission):
    """Anyone who may read can read; writing needs the annotator role."""

    message = "labeling needs the annotator role"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return access.can_read(request.user)
        return access.can_label(request.user)


class ReadOrCurate(BasePermission):
    message = "this needs the curator role"

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return access.can_read(request.user)
        return access.can_curate(request.user)
