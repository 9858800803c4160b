"""Jobs over the API: progress for everyone, cancel for the creator and curators."""

from __future__ import annotations

import pytest

from browser.runs.models import Job
from browser.runs.services import job_create, job_progress
from tests.conftest import Cast


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("curator", 200), ("collaborator", 403),
                                             ("outsider", 403), ("anonymous", 401)])
def test_cancel_is_for_the_creator_and_curators(cast: Cast, who: str, status: int) -> None:
    job = job_create(kind=Job.Kind.HARVEST, title="harvest x", created_by=cast.owner)
    response = cast.client(who).post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == status, response.content
    job.refresh_from_db()
    assert job.status == (Job.Status.CANCELLED if status == 200 else Job.Status.QUEUED)


def test_job_progress_is_visible(cast: Cast) -> None:
    job = job_create(kind=Job.Kind.HARVEST, title="harvest y", created_by=cast.owner)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    job_progress(job_id=job.pk, done=25, total=100, message="shard 1 of 4")
    body = cast.client("anonymous").get(f"/api/v1/jobs/{job.pk}/").json()
    assert (body["percent"], body["message"], body["created_by"]) == (25.0, "shard 1 of 4", "owner")
    listed = cast.client("anonymous").get("/api/v1/jobs/").json()["results"]
    assert [j["id"] for j in listed] == [job.pk]
    assert cast.client("anonymous").get("/api/v1/jobs/999999/").json()["error"]["status"] == 404
    assert cast.client("anonymous").get("/api/v1/runs/").json()["results"] == []
