"""Harvests asked for over the API: validated here as far as the web side can (no model is
loaded here), then created by a worker from a queued job."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from browser.accounts import access
from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.runs.models import Job
from browser.runs.services import job_create


def harvest_request_create(*, user: Any, request: dict[str, Any]) -> Job:
    if not access.can_curate(user):
        raise PermissionDenied("creating runs needs the curator role")
    if not Model.objects.filter(name=request["model"]).exists():
        raise ValidationError({"model": f"no registered model {request['model']!r}; register it first "
                                        "(manage.py register_model)"})
    corpus = Corpus.objects.filter(name=request["corpus"]).first()
    if corpus is None or corpus.status != Corpus.Status.READY:
        raise ValidationError({"corpus": f"no ready corpus named {request['corpus']!r}"})
    job = job_create(kind=Job.Kind.HARVEST, title=f"harvest request {request['model']} x {request['corpus']}",
                     params={"request": request}, created_by=user)

    def queue() -> None:
        from workers.celery import app

        app.send_task("workers.tasks.harvest_request", args=[job.pk])

    transaction.on_commit(queue)
    return job
