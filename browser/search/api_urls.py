from __future__ import annotations

from django.urls import path

from browser.search import apis

urlpatterns = [
    path("sources/<str:model>/<str:source>/map/", apis.SourceMapApi.as_view(), name="api-source-map"),
    path("units/<str:model>/<str:source>/<int:index>/family/", apis.UnitFamilyApi.as_view(), name="api-unit-family"),
]
