"""gunicorn's configuration: ``gunicorn browser.wsgi:application -c python:browser.gunicorn_conf``.

Every value can be overridden on the command line or through the ``BROWSER_WEB_*`` variables
(docs/settings.md). The embedded servers (when a URL is unset) are started by the master before it
forks, so the first request does not wait for them and a request that reaches Redis before the
database finds it up.
"""

from __future__ import annotations

import os
from typing import Any

from browser.core.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "browser.settings")
# Each thread keeps its database connection for the next request (a new one costs a PostgreSQL
# backend fork: 2 ms of CPU here and 20-40 ms of waiting on a busy machine).
os.environ.setdefault("BROWSER_DB_CONN_MAX_AGE", "60")

bind = os.environ.get("BROWSER_WEB_BIND", "127.0.0.1:8000")
workers = env_int("BROWSER_WEB_WORKERS", 4, minimum=1, maximum=256)
threads = env_int("BROWSER_WEB_THREADS", 4, minimum=1, maximum=256)
worker_class = "gthread"
keepalive = env_int("BROWSER_WEB_KEEPALIVE_S", 0, minimum=0, maximum=3600)
# Without keep-alive, a worker takes a connection only while it has a free thread: the requests
# wait in one queue (the listening socket's) for whichever worker frees a thread first.
worker_connections = threads if keepalive == 0 else 1000
timeout = env_int("BROWSER_WEB_TIMEOUT_S", 120, minimum=10, maximum=3600)
backlog = 2048


def on_starting(server: Any) -> None:
    from browser.core import embedded

    embedded.ensure_configured()
