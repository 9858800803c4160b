"""The steering page: ``/steer/?prompt=...&unit=...`` shows the request's form and, for a signed-in
user, its result (plain and steered side by side). The URL is the shareable form of a result: opening
it runs the request again. The unit page's panel (``catalog/_steer.html``) submits here."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from browser.api.compute import compute_refusal
from browser.catalog.steer import (
    MAX_N_TOKENS,
    MAX_UNITS,
    SteerError,
    parse_spec,
    steer_request,
    steer_run,
    unit_edit,
)
from workers.compute.ops import OPS


def _edits(request: HttpRequest) -> list[Any]:
    """The panel's first unit (u, op, value, at) plus ``unit`` specs and ``more`` lines."""
    q = request.GET
    edits = []
    if q.get("u"):
        edits.append(unit_edit(uid=q["u"], op=q.get("op", "steer"), value=q.get("value") or None, positions=q.get("at")))
    specs = q.getlist("unit") + q.get("more", "").splitlines()
    return edits + [parse_spec(s) for s in specs if s.strip()]


def steer_page(request: HttpRequest) -> HttpResponse:
    q = request.GET
    context: dict[str, Any] = {"ops": OPS, "max_units": MAX_UNITS, "max_n": MAX_N_TOKENS, "prompt": q.get("prompt", ""),
                               "n": q.get("n", 16), "temperature": q.get("temperature", 0), "seed": q.get("seed", 0)}
    status = 200
    if "prompt" in q:
        try:
            req = steer_request(prompt=q.get("prompt", ""), edits=_edits(request), n_tokens=q.get("n", 16),
                                temperature=q.get("temperature", 0), seed=q.get("seed", 0))
            context.update(req=req, more="\n".join(e.spec for e in req.edits))
            refusal = compute_refusal(request)
            if refusal is not None:
                status, context["error"] = refusal
            else:
                context["result"] = steer_run(req)
        except SteerError as exc:
            status, context["error"] = 422, str(exc)
        context.setdefault("more", "\n".join(q.getlist("unit")))
    return render(request, "catalog/steer.html", context, status=status)
