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


TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/app/secret_path.py", line 3\nRuntimeError: boom'


@pytest.mark.parametrize(("who", "sees"), [("owner", True), ("curator", True), ("collaborator", False),
                                           ("outsider", False), ("anonymous", False)])
def test_tracebacks_and_logs_are_for_the_creator_and_curators(cast: Cast, who: str, sees: bool) -> None:
    job = job_create(kind=Job.Kind.HARVEST, title="harvest z", created_by=cast.owner)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error=TRACEBACK, log="loaded /srv/model\nfailed")
    client = cast.client(who)
    detail = client.get(f"/api/v1/jobs/{job.pk}/").json()
    (listed,) = client.get("/api/v1/jobs/").json()["results"]
    for body in (detail, listed):
        assert body["status"] == "failed"  # everyone sees that it failed
        assert (body["error"] == TRACEBACK) is sees and ("secret_path" in str(body)) is sees
        assert body["log_tail"] == (["loaded /srv/model", "failed"] if sees else [])
    for url in ("/api/v1/overview/", "/api/v1/overview/jobs/", "/"):  # progress only, for everyone
        assert "secret_path" not in client.get(url).content.decode()


def test_a_failed_runs_error_is_for_its_creator_and_curators(cast: Cast) -> None:
    from browser.catalog.models import Model, Tokenizer
    from browser.corpora.models import Corpus
    from browser.runs.models import Run

    model = Model.objects.create(name="m", kind="encoder", architecture="bert", location="-", n_layers=1,
                                 d_model=4, d_mlp=8)
    tokenizer = Tokenizer.objects.create(name="t", vocab_hash="0" * 64, tokens=[])
    corpus = Corpus.objects.create(name="c", tokenizer=tokenizer, tokenizer_model=model, context_length=8)
    job = job_create(kind=Job.Kind.HARVEST, title="harvest w", created_by=cast.owner)
    run = Run.objects.create(model=model, corpus=corpus, config={}, config_hash="h", status=Run.Status.FAILED,
                             error=TRACEBACK, job=job, created_by=cast.owner)
    for who, sees in [("owner", True), ("curator", True), ("collaborator", False), ("anonymous", False)]:
        client = cast.client(who)
        for body in (client.get(f"/api/v1/runs/{run.pk}/").json(), client.get("/api/v1/runs/").json()["results"][0]):
            assert body["status"] == "failed" and (body["error"] == TRACEBACK) is sees, who
