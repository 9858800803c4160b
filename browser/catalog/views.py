from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from browser.catalog.selectors import model_list, source_list
from browser.corpora.selectors import corpus_list
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
