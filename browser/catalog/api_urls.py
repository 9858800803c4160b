from __future__ import annotations

from django.urls import path
from django.views.generic import RedirectView

from browser.catalog import apis, steer_apis, sweep_apis, toy_apis

urlpatterns = [
    path("overview/", apis.OverviewApi.as_view(), name="api-overview"),
    path("steer/", steer_apis.SteerApi.as_view(), name="api-steer"),
    # The jobs API (browser/runs) is the one source of job progress; the home page's old poll URL leads there.
    path("overview/jobs/", RedirectView.as_view(pattern_name="api-jobs", permanent=True, query_string=True),
         name="api-overview-jobs"),
    path("models/", apis.ModelListApi.as_view(), name="api-models"),
    path("models/<str:model>/toy/", toy_apis.ToyApi.as_view(), name="api-toy"),
    path("sources/", apis.SourceListApi.as_view(), name="api-sources"),
    path("sources/<str:model>/<str:source>/", apis.SourceUnitsApi.as_view(), name="api-source"),
    path("sources/<str:model>/<str:source>/sweeps/", sweep_apis.SweepsApi.as_view(), name="api-source-sweeps"),
    path("units/", apis.UnitListApi.as_view(), name="api-units"),
    path("units/<str:model>/<str:source>/<int:index>/", apis.UnitDetailApi.as_view(), name="api-unit"),
    path("units/<str:model>/<str:source>/<int:index>/probe/", apis.UnitProbeApi.as_view(), name="api-unit-probe"),
    path("compare/", apis.CompareApi.as_view(), name="api-compare"),
]
