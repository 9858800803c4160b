"""Everything under /api/v1/: each app's JSON views, the OpenAPI schema and the interactive docs."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from browser.imports.apis import NeuronpediaImportApi
from browser.labels import apis as label_apis
from browser.runs import apis as run_apis

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("labels/", label_apis.LabelListCreate.as_view(), name="api-labels"),
    path("labels/import/", label_apis.LabelImport.as_view(), name="api-labels-import"),
    path("labels/queue/", label_apis.QueueNext.as_view(), name="api-labels-queue"),
    path("labels/<int:pk>/", label_apis.LabelDetail.as_view(), name="api-label"),
    path("labels/<int:pk>/revisions/", label_apis.LabelRevisions.as_view(), name="api-label-revisions"),
    path("imports/neuronpedia/", NeuronpediaImportApi.as_view(), name="api-imports-neuronpedia"),
    path("exports/", include("browser.exports.urls")),
    path("", include("browser.graphs.api_urls")),
    path("jobs/", run_apis.JobList.as_view(), name="api-jobs"),
    path("jobs/<int:pk>/", run_apis.JobDetail.as_view(), name="api-job"),
    path("jobs/<int:pk>/cancel/", run_apis.JobCancel.as_view(), name="api-job-cancel"),
    path("runs/", run_apis.RunList.as_view(), name="api-runs"),
    path("runs/<int:pk>/", run_apis.RunDetail.as_view(), name="api-run"),
    path("runs/<int:pk>/intervention-scores/", run_apis.InterventionScoresApi.as_view(),
         name="api-run-intervention-scores"),
    path("", include("browser.search.api_urls")),
    path("", include("browser.catalog.api_urls")),
]
