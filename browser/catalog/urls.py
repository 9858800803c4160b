from __future__ import annotations

from django.urls import path

from browser.catalog import views

urlpatterns = [
    path("", views.home, name="home"),
]
