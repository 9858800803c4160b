"""HTML pages: each parses its input, calls one selector (the same one its JSON twin calls), renders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from browser.api.compute import compute_refusal
from browser.catalog.fragments import unit_rows, unit_run_fragments
from browser.catalog.models import Model, Source, Unit
from browser.catalog.page_selectors import compare as compare_units
from browser.catalog.page_selectors import overview, unit_detail
from browser.catalog.probe import ProbeError, probe_unit
from browser.catalog.selectors import (
    FilterError,
    model_get,
    parse_unit_filters,
    score_names,
    source_get,
    unit_by_id,
    unit_get,
    unit_stats_run_created,
)
from browser.catalog.sweep_selectors import sweep_panel
from browser.catalog.toy_selectors import toy_view
from browser.catalog.unit_selectors import sae_summary
from browser.labels.selectors import label_panel
from browser.search.selectors import unit_list_page

if TYPE_CHECKING:
    from browser.labels.models import Label


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "catalog/home.html", {"o": overview()})


def _unit_list(request: HttpRequest, context: dict[str, Any], **fixed: str) -> HttpResponse:
    try:
        filters = parse_unit_filters(request.GET, **fixed)
        page = unit_list_page(filters, cursor=request.GET.get("cursor") or None)
    except FilterError as exc:
        context["error"] = str(exc)
        filters, page = parse_unit_filters({}, **fixed), None
    query = request.GET.copy()
    query.pop("cursor", None)
    names = score_names()
    context.update({"page": page, "f": filters, "score_names": names, "query": query.urlencode(),
                    "kinds": Source.Kind.choices, "sort_choices": _sort_choices(names),
                    "rows": unit_rows(page.units, source=context.get("source"), filters=filters) if page else ""})
    return render(request, "catalog/units.html", context, status=400 if "error" in context else 200)


def _sort_choices(names: list[str]) -> list[tuple[str, str]]:
    out = [("index", "index")]
    for key, name in [("density", "density"), ("max_activation", "max activation"),
                      ("mean_activation", "mean activation"), *((f"score:{n}", n) for n in names)]:
        out += [(f"-{key}", f"{name}, highest first"), (key, f"{name}, lowest first")]
    return out


def unit_list(request: HttpRequest) -> HttpResponse:
    return _unit_list(request, {"sources": Source.objects.select_related("model").order_by("model__name", "layer")})


def source_detail(request: HttpRequest, model: str, source: str) -> HttpResponse:
    src = source_get(model_name=model, source_name=source)
    context = {"source": src, "sae": sae_summary(src), "sweep": sweep_panel(src)}
    return _unit_list(request, context, model=model, source=source)


def unit_detail_view(request: HttpRequest, model: str, source: str, index: int) -> HttpResponse:
    unit = unit_get(model_name=model, source_name=source, index=index)
    return render(request, "catalog/unit.html", _unit_context(request, unit))


def _unit_context(request: HttpRequest, unit: Unit) -> dict[str, Any]:
    d = unit_detail(unit)
    return {"d": d, "unit": unit, "run": unit_run_fragments(d, unit_stats_run_created(unit)),
            "label_panel": _label_panel(request, unit, d.labels)}


def _label_panel(request: HttpRequest, unit: Unit, labels: list[Label]) -> dict[str, Any]:
    return label_panel(unit, user=request.user, queue=request.GET.get("queue", ""), labels=labels)


@require_POST
def unit_probe(request: HttpRequest, model: str, source: str, index: int) -> HttpResponse:
    unit = unit_get(model_name=model, source_name=source, index=index)
    text = request.POST.get("text", "")
    context = {**_unit_context(request, unit), "text": text}
    status = 200
    refusal = compute_refusal(request)
    if refusal is not None:
        status, context["probe_error"] = refusal
    else:
        try:
            context["probe"] = probe_unit(unit=unit, text=text)
        except ProbeError as exc:
            status, context["probe_error"] = 422, str(exc)
    context["label_panel"] = _label_panel(request, unit, context["d"].labels)
    return render(request, "catalog/unit.html", context, status=status)


def compare(request: HttpRequest) -> HttpResponse:
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    if not a:
        return render(request, "catalog/compare.html", {"c": None, "a": "", "b": b})
    comparison = compare_units(unit_by_id(a), unit_by_id(b) if b else None)
    return render(request, "catalog/compare.html", {"c": comparison, "a": a, "b": b})


def toy(request: HttpRequest, model: str) -> HttpResponse:
    m = model_get(name=model)
    if m.kind != Model.Kind.TOY:
        raise Http404(f"{m.name} is not a toy model")
    return render(request, "catalog/toy.html", {"t": toy_view(m)})
