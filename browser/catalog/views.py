from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from browser.catalog.selectors import model_list, source_get, source_list, unit_get, unit_list
from browser.corpora.selectors import corpus_list
from browser.examples.selectors import histogram_svg, interval_range, unit_examples, unit_stats
from browser.runs.selectors import job_list, job_percent, run_list


def home(request: HttpRequest) -> HttpResponse:
    jobs = list(job_list())
    for job in jobs:
        job.percent = job_percent(job)  # type: ignore[attr-defined]
    context = {
        "models": model_list(),
        "corpora": corpus_list(),
        "sources": source_list(),
        "runs": run_list(),
        "jobs": jobs,
    }
    return render(request, "catalog/home.html", context)


def source_detail(request: HttpRequest, model: str, source: str) -> HttpResponse:
    src = source_get(model_name=model, source_name=source)
    page = Paginator(unit_list(source=src), 100).get_page(request.GET.get("page"))
    return render(request, "catalog/source.html", {"source": src, "page": page})


def unit_detail(request: HttpRequest, model: str, source: str, index: int) -> HttpResponse:
    unit = unit_get(model_name=model, source_name=source, index=index)
    stats = unit_stats(unit)
    examples = unit_examples(unit)
    intervals: dict[int, list[object]] = {}
    for e in examples:
        if e.kind == "interval":
            intervals.setdefault(e.bucket, []).append(e)
    vocab = unit.source.model.tokenizer.tokens if unit.source.model.tokenizer else []
    effects = {side: [(vocab[t] if t < len(vocab) else "?", v) for t, v in unit.logit_effects.get(side, [])]
               for side in ("up", "down")}
    context = {
        "unit": unit, "stats": stats, "hist": histogram_svg(stats) if stats else None,
        "top": [e for e in examples if e.kind == "top"],
        "intervals": [(interval_range(b), members) for b, members in intervals.items()],
        "random": [e for e in examples if e.kind == "random"], "effects": effects,
        "prev": unit.index - 1 if unit.index > 0 else None,
        "next": unit.index + 1 if unit.index + 1 < unit.source.n_units else None,
    }
    return render(request, "catalog/unit.html", context)
