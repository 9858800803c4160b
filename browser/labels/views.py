from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from browser.catalog.models import Unit
from browser.catalog.uids import unit_by_uid
from browser.labels.models import Label
from browser.labels.selectors import queue_next
from browser.labels.services import LabelConflict, label_delete, label_save

QUEUE_FILTERS = ("model", "source", "layer", "kind")


def _unit(model: str, source: str, index: int) -> Unit:
    return get_object_or_404(Unit.objects.select_related("source", "source__model"),
                             source__model__name=model, source__name=source, index=index)


def _after_save(request: HttpRequest, unit: Unit) -> HttpResponse:
    queue = request.POST.get("queue", "")
    if queue:
        return HttpResponseRedirect(f"{reverse('label_queue')}?{queue}&after={unit.pk}")
    return redirect("unit", unit.source.model.name, unit.source.name, unit.index)


@require_POST
def unit_label(request: HttpRequest, model: str, source: str, index: int) -> HttpResponse:
    unit = _unit(model, source, index)
    revision = request.POST.get("revision", "")
    try:
        label_save(unit=unit, user=request.user, text=request.POST.get("text"), tags=request.POST.get("tags"),
                   confidence=request.POST.get("confidence"),
                   revision=int(revision) if revision.isdigit() else None)
    except PermissionDenied as exc:
        if not request.user.is_authenticated:
            return redirect(f"{reverse('login')}?{urlencode({'next': request.path})}")
        raise exc
    except LabelConflict as exc:
        messages.error(request, f"Not saved: {exc}. The current text is shown below.")
        return redirect("unit", model, source, index)
    except ValidationError as exc:
        messages.error(request, "Not saved: " + "; ".join(exc.messages))
        return redirect("unit", model, source, index)
    messages.success(request, "Label saved.")
    return _after_save(request, unit)


@require_POST
def label_delete_view(request: HttpRequest, pk: int) -> HttpResponse:
    label = get_object_or_404(Label.objects.select_related("unit__source__model"), pk=pk)
    unit = label.unit
    try:
        label_delete(label=label, user=request.user, revision=int(request.POST.get("revision", "0")) or None)
    except LabelConflict as exc:
        messages.error(request, f"Not deleted: {exc}.")
    else:
        messages.success(request, "Label deleted.")
    return redirect("unit", unit.source.model.name, unit.source.name, unit.index)


def label_queue(request: HttpRequest) -> HttpResponse:
    """The next unlabeled unit in the filter (model, source, layer, kind), opened in queue mode."""
    filters = {key: request.GET[key] for key in QUEUE_FILTERS if request.GET.get(key)}
    after_id = request.GET.get("after", "")
    after = Unit.objects.filter(pk=int(after_id)).first() if after_id.isdigit() else None
    layer = filters.get("layer", "")
    unit = queue_next(model=filters.get("model"), source=filters.get("source"),
                      layer=int(layer) if layer.lstrip("-").isdigit() else None, kind=filters.get("kind"),
                      after=after)
    if unit is None:
        return render(request, "labels/queue_done.html", {"filters": filters}, status=200)
    url = reverse("unit", args=[unit.source.model.name, unit.source.name, unit.index])
    return HttpResponseRedirect(f"{url}?{urlencode({'queue': urlencode(filters) or 'all=1'})}")


def label_goto(request: HttpRequest) -> HttpResponse:
    """Open a unit by its stable id (``?uid=model/source/index``)."""
    try:
        unit = unit_by_uid(request.GET.get("uid", ""))
    except ValidationError as exc:
        return render(request, "labels/queue_done.html", {"error": exc.messages[0]}, status=404)
    return redirect("unit", unit.source.model.name, unit.source.name, unit.index)
