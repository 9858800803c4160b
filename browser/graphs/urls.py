from __future__ import annotations

from django.urls import path

from browser.graphs import views

urlpatterns = [
    path("graphs/", views.graph_list_view, name="graphs"),
    path("graphs/compare/", views.graph_compare_view, name="graph_compare"),
    path("graphs/import/", views.graph_import_view, name="graph_import"),
    path("graphs/<int:pk>/", views.graph_view, name="graph"),
    path("graphs/<int:pk>/check/", views.graph_check_view, name="graph_check"),
    path("graphs/<int:pk>/supernodes/", views.graph_supernode_view, name="graph_supernode"),
]
