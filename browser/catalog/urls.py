from __future__ import annotations

from django.urls import path

from browser.catalog import views

urlpatterns = [
    path("", views.home, name="home"),
    path("s/<str:model>/<str:source>/", views.source_detail, name="source"),
    path("u/<str:model>/<str:source>/<int:index>/", views.unit_detail, name="unit"),
]
