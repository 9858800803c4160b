from __future__ import annotations

from django.urls import path

from browser.catalog import steer_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("units/", views.unit_list, name="units"),
    path("compare/", views.compare, name="compare"),
    path("m/<str:model>/toy/", views.toy, name="toy"),
    path("s/<str:model>/<str:source>/", views.source_detail, name="source"),
    path("u/<str:model>/<str:source>/<int:index>/", views.unit_detail_view, name="unit"),
    path("u/<str:model>/<str:source>/<int:index>/probe/", views.unit_probe, name="unit_probe"),
    path("steer/", steer_views.steer_page, name="steer"),
]
