"""`manage.py embedded start|status|stop`: the embedded PostgreSQL and Redis under the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.core import embedded


class Command(BaseCommand):
    help = ("Start, show or stop the embedded PostgreSQL and Redis (used when DATABASE_URL or REDIS_URL "
            "is unset). They start by themselves when a command needs them and keep running between "
            "commands; `stop` shuts them down cleanly.")
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["start", "status", "stop"])

    def handle(self, *args: Any, **opts: Any) -> None:
        data_dir = Path(settings.DATA_DIR)
        if opts["action"] == "start":
            if not settings.EMBEDDED:
                raise CommandError("DATABASE_URL and REDIS_URL are both set: no embedded server is used")
            embedded.ensure_configured()
        elif opts["action"] == "stop":
            embedded.stop(data_dir)
        for name, running in embedded.status(data_dir).items():
            self.stdout.write(f"{name}: {'running' if running else 'stopped'} ({data_dir})")
