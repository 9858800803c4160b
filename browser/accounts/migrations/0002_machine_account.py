"""Machine authors get their own namespace: Account.machine, and the system users that wrote only
machine labels (no password) renamed to ``machine:NAME``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import migrations, models

PREFIX = "machine:"


def move_machine_users(apps: Any, schema_editor: Any) -> None:
    User = apps.get_model("auth", "User")
    Account = apps.get_model("accounts", "Account")
    Label = apps.get_model("labels", "Label")
    authors = set(Label.objects.filter(machine=True).values_list("author_id", flat=True))
    people = set(Label.objects.filter(machine=False).values_list("author_id", flat=True))
    for user in User.objects.filter(pk__in=authors - people, password__startswith=UNUSABLE_PASSWORD_PREFIX):
        if user.username.startswith(PREFIX):
            continue
        user.username = (PREFIX + user.username)[:150]
        user.save(update_fields=["username"])
        Account.objects.update_or_create(user=user, defaults={"machine": True})


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        ("labels", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="account",
            name="machine",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(move_machine_users, migrations.RunPython.noop),
    ]
