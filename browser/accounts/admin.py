from __future__ import annotations

from django.contrib import admin

from browser.accounts.models import Account, ApiToken


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["user", "role"]
    list_filter = ["role"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "name", "created", "last_used", "revoked"]
    readonly_fields = ["prefix", "digest", "created", "last_used"]
