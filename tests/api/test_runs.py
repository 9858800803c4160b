"""Runs over the API: curators ask for a harvest, a real worker creates and runs it, everyone
sees its progress."""

from __future__ import annotations

import subprocess
import time

import pytest

from browser.catalog.models import Model
from browser.corpora.models import Corpus
from browser.runs.models import Job, Run
from tests.conftest import Cast

REQUEST = {"model": "tiny", "corpus": "lines", "hooks": "blocks.0.mlp.hook_post", "k": 4, "batch_size": 8}


@pytest.mark.parametrize(("who", "status"), [("owner", 403), ("collaborator", 403), ("outsider", 403),
                                             ("anonymous", 401)])
def test_only_curators_create_runs(cast: Cast, tiny: Model, corpus: Corpus, who: str, status: int) -> None:
    response = cast.client(who).post("/api/v1/runs/", REQUEST, format="json")
    assert response.status_code == status
    assert not Job.objects.filter(title__startswith="harvest request").exists()


@pytest.mark.parametrize(("change", "field"), [({"model": "nope"}, "model"), ({"corpus": "nope"}, "corpus"),
                                               ({"k": 0}, "k"), ({"device": "tpu"}, "device"),
                                               ({"dtype": "int8"}, "dtype")])
def test_bad_run_requests(cast: Cast, tiny: Model, corpus: Corpus, change: dict[str, object], field: str) -> None:
    response = cast.client("curator").post("/api/v1/runs/", {**REQUEST, **change}, format="json")
    assert response.status_code == 400 and field in response.json()["error"]["fields"]
    assert not Job.objects.filter(title__startswith="harvest request").exists()


@pytest.mark.slow
def test_a_curator_runs_a_harvest_through_the_api(cast: Cast, tiny: Model, corpus: Corpus,
                                                  worker: subprocess.Popen[bytes]) -> None:
    api = cast.client("curator")
    response = api.post("/api/v1/runs/", REQUEST, format="json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    deadline = time.monotonic() + 240
    run_id = None
    while time.monotonic() < deadline:
        job = api.get(f"/api/v1/jobs/{job_id}/").json()
        assert job["status"] != "failed", job["error"]
        run_id = Job.objects.get(pk=job_id).params.get("run_id")
        if run_id and Run.objects.get(pk=run_id).status == Run.Status.DONE:
            break
        time.sleep(1)
    assert run_id is not None
    run = cast.client("anonymous").get(f"/api/v1/runs/{run_id}/").json()
    assert run["status"] == "done" and run["percent"] == 100.0 and run["sources"] == ["blocks.0.mlp.hook_post"]
    assert run["config"]["k"] == 4
    again = api.post("/api/v1/runs/", REQUEST, format="json").json()["id"]
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=again).status != Job.Status.SUCCEEDED and time.monotonic() < deadline:
        time.sleep(0.5)
    assert Job.objects.get(pk=again).params["run_id"] == run_id and Run.objects.count() == 1
