"""Django's PostgreSQL backend, starting the embedded servers before the first connection.

The settings use this engine when ``DATABASE_URL`` or ``REDIS_URL`` is unset: importing the
settings starts nothing, and a command that never touches the database (``--help``,
``manage.py embedded stop``) never starts a server.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from browser.core import embedded


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        embedded.ensure_configured()
        return super().get_new_connection(conn_params)
