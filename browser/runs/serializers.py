"""The JSON shape of a job, the one every API that shows job progress uses (the jobs API, the
overview, the endpoints that queue a job): everyone sees progress; only the creator and curators see
its error (a traceback) and log."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from browser.accounts import access
from browser.runs.models import Job
from browser.runs.selectors import job_eta, job_log_tail, job_percent


class JobSerializer(serializers.ModelSerializer):
    status_display = serializers.CharField(source="get_status_display", read_only=True)
    percent = serializers.SerializerMethodField()
    eta_seconds = serializers.SerializerMethodField()
    log_tail = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = ["id", "kind", "status", "status_display", "title", "done", "total", "percent", "eta_seconds",
                  "message", "error", "attempts", "cancel_requested", "created_by", "created", "started", "finished", "log_tail"]

    def get_percent(self, job: Job) -> float:
        return round(job_percent(job), 2)

    def get_eta_seconds(self, job: Job) -> float | None:
        eta = job_eta(job)
        return round(eta.total_seconds(), 1) if eta is not None else None

    def get_log_tail(self, job: Job) -> list[str]:
        return job_log_tail(job, 20)

    def get_created_by(self, job: Job) -> str | None:
        return job.created_by.username if job.created_by else None

    def to_representation(self, job: Job) -> dict[str, Any]:
        data = super().to_representation(job)
        if not access.can_see_job_details(request_user(self.context), job):
            data.update(error="", log_tail=[])
        return data


def request_user(context: dict[str, Any]) -> Any:
    request = context.get("request")
    return getattr(request, "user", None)
