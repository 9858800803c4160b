from __future__ import annotations

from django.urls import path

from browser.search import views

urlpatterns = [
    path("s/<str:model>/<str:source>/map/", views.source_map_page, name="source_map"),
]
