from __future__ import annotations

from django.urls import path, re_path

from browser.exports import apis

urlpatterns = [
    re_path(r"^labels\.(?P<fmt>jsonl|csv|parquet)$", apis.LabelExport.as_view(), name="api-export-labels"),
    path("card/", apis.DatasetCard.as_view(), name="api-export-card"),
    path("deleted/", apis.DeletedLabels.as_view(), name="api-export-deleted"),
    path("neuronpedia.json", apis.NeuronpediaExport.as_view(), name="api-export-neuronpedia"),
    path("neuron-records/<str:model>/<str:source>/<int:index>/", apis.NeuronRecordExport.as_view(),
         name="api-export-neuron-record"),
]
