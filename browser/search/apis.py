"""JSON twins of the map page and of a feature's family panel (same selectors as the pages)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from browser.catalog.selectors import source_get, unit_get
from browser.catalog.uids import unit_uid
from browser.search.families import unit_family
from browser.search.models import FamilyLink
from browser.search.overview_selectors import source_map_current


class SourceMapApi(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, operation_id="sources_map",
                   summary="The 2-D map of a source's units for its current state: [index, x, y] per unit")
    def get(self, request: Request, model: str, source: str) -> Response:
        src = source_get(model_name=model, source_name=source)
        row, coords = source_map_current(src)
        if row is None or coords is None:
            raise Http404("no map for this source's current state")
        return Response({"source": f"{model}/{source}", "state": row.state, "method": row.method,
                         "created": row.created, "points": [[i, round(float(x), 4), round(float(y), 4)]
                                                            for i, (x, y) in enumerate(coords.tolist())]})


def _link(link: FamilyLink, other: str) -> dict[str, object]:
    return {"unit": unit_uid(getattr(link, other)), "cosine": link.cosine, "coactivation": link.coactivation}


class UnitFamilyApi(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, operation_id="units_family",
                   summary="A feature's parents in narrower SAEs, children in wider ones, adjacent-layer features")
    def get(self, request: Request, model: str, source: str, index: int) -> Response:
        family = unit_family(unit_get(model_name=model, source_name=source, index=index))
        return Response({"parents": [_link(x, "parent") for x in family.parents],
                         "children": [_link(x, "child") for x in family.children],
                         "previous_layer": [_link(x, "parent") for x in family.previous_layer],
                         "next_layer": [_link(x, "child") for x in family.next_layer]})
