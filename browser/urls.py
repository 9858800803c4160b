from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("browser.accounts.urls")),
    path("api/v1/", include("browser.api.urls")),
    path("", include("browser.labels.urls")),
    path("", include("browser.catalog.urls")),
    path("", include("browser.search.urls")),
    path("", include("browser.graphs.urls")),
]
