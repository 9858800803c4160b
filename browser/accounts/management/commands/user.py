from __future__ import annotations

import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.accounts.models import ApiToken, Role
from browser.accounts.services import token_create, token_revoke, user_create, user_set_role


class Command(BaseCommand):
    help = "Users, roles and API tokens: create, role, token, revoke, list."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a user")
        create.add_argument("username")
        create.add_argument("--role", default=Role.VIEWER, choices=Role.values)
        create.add_argument("--password", help="default: asked on the terminal; '-' for no password (API only)")
        role = sub.add_parser("role", help="set a user's role")
        role.add_argument("username")
        role.add_argument("role", choices=Role.values)
        token = sub.add_parser("token", help="create an API token and print it (once)")
        token.add_argument("username")
        token.add_argument("--name", default="cli")
        revoke = sub.add_parser("revoke", help="revoke an API token by its prefix")
        revoke.add_argument("prefix")
        sub.add_parser("list", help="list users with their roles")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            getattr(self, f"_{opts['action']}")(opts)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None

    def _user(self, username: str) -> Any:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        return user

    def _create(self, opts: dict[str, Any]) -> None:
        password = opts["password"]
        if password is None:
            password = getpass.getpass(f"Password for {opts['username']}: ")
        user = user_create(username=opts["username"], password=None if password == "-" else password,
                           role=opts["role"])
        self.stdout.write(f"Created {user.username} ({opts['role']}).\n")

    def _role(self, opts: dict[str, Any]) -> None:
        user_set_role(user=self._user(opts["username"]), role=opts["role"])
        self.stdout.write(f"{opts['username']} is now {opts['role']}.\n")

    def _token(self, opts: dict[str, Any]) -> None:
        user = self._user(opts["username"])
        _, raw = token_create(user=user, owner=user, name=opts["name"])
        self.stdout.write(raw + "\n")

    def _revoke(self, opts: dict[str, Any]) -> None:
        tokens = list(ApiToken.objects.filter(prefix__startswith=opts["prefix"][:10], revoked__isnull=True))
        if len(tokens) != 1:
            raise CommandError(f"{len(tokens)} active tokens start with {opts['prefix']!r}; give more of it")
        token_revoke(user=tokens[0].user, token=tokens[0])
        self.stdout.write(f"Revoked {tokens[0]}.\n")

    def _list(self, opts: dict[str, Any]) -> None:
        from browser.accounts import access

        for user in get_user_model().objects.order_by("username"):
            self.stdout.write(f"{user.username}\t{access.role_of(user) or 'inactive'}\n")
