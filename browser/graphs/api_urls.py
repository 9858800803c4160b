from __future__ import annotations

from django.urls import path

from browser.graphs import apis

urlpatterns = [
    path("graphs/", apis.GraphListCreate.as_view(), name="api-graphs"),
    path("graphs/import/", apis.GraphImport.as_view(), name="api-graph-import"),
    path("graphs/<int:pk>/", apis.GraphDetail.as_view(), name="api-graph"),
    path("graphs/<int:pk>/check/", apis.GraphCheck.as_view(), name="api-graph-check"),
    path("graphs/<int:pk>/neuronpedia/", apis.GraphNeuronpedia.as_view(), name="api-graph-neuronpedia"),
    path("graphs/<int:pk>/supernodes/", apis.GraphSupernodes.as_view(), name="api-graph-supernodes"),
]
