"""Lists rendered item by item, each item kept in the cache (Redis, the ``default`` cache) under a
digest of what it shows.

For lists whose items change one at a time (the labels of a hot unit, the rows of a unit list):
the list as a whole changes too often to be found again, its items do not. One ``get_many`` reads
the kept items; only the others are rendered (and kept). The key is a digest of the item's content
as the caller describes it (everything its template shows), so nothing needs invalidating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from django.core.cache import cache
from django.template.loader import get_template
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

TTL_S = 24 * 3600


def item_key(kind: str, content: tuple[Any, ...]) -> str:
    """``kind`` names the template and its version; dates render in the current time zone."""
    digest = hashlib.blake2b(repr(content).encode(), digest_size=16).hexdigest()
    return f"item:{kind}:{timezone.get_current_timezone_name()}:{digest}"


def cached_items(kind: str, objects: Sequence[Any], content: Callable[[Any], tuple[Any, ...]], template: str,
                 context: Callable[[Any], dict[str, Any]]) -> SafeString:
    """``objects`` rendered one by one with ``template`` (context: ``context(obj)``), joined. An
    item's ``content(obj)`` must cover everything the template shows of it."""
    keys = [item_key(kind, content(obj)) for obj in objects]
    kept = cache.get_many(keys) if keys else {}
    missing: dict[str, str] = {}
    for key, obj in zip(keys, objects, strict=True):
        if not isinstance(kept.get(key), str) and key not in missing:
            missing[key] = get_template(template).render(context(obj))
    if missing:
        cache.set_many(missing, TTL_S)
    return mark_safe("".join(missing[key] if key in missing else kept[key] for key in keys))  # noqa: S308  (autoescaped templates)
