from __future__ import annotations

from django.urls import path

from browser.labels import views

urlpatterns = [
    path("u/<str:model>/<str:source>/<int:index>/label/", views.unit_label, name="unit_label"),
    path("labels/<int:pk>/delete/", views.label_delete_view, name="label_delete"),
    path("queue/", views.label_queue, name="label_queue"),
    path("goto/", views.label_goto, name="unit_goto"),
]
