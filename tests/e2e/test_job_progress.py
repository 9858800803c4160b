"""End to end in headless Chromium: the home page's progress bars follow a running job through the
jobs API (``/api/v1/jobs/``, the one source of job progress), until the job finishes."""

from __future__ import annotations

from typing import Any

import pytest

from browser.runs.models import Job
from browser.runs.services import job_create, job_progress
from tests.e2e.test_browser import _shot, page  # noqa: F401  # the Chromium page fixture

pytestmark = pytest.mark.slow


def test_home_page_bars_follow_the_jobs_api(transactional_db: None, page: Any) -> None:  # noqa: F811
    job = job_create(kind=Job.Kind.HARVEST, title="harvest e2e", created_by=None)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    job_progress(job_id=job.pk, done=1, total=4, message="shard 1 of 4")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/jobs/")) as first:
        page.goto("/")
    row = page.locator(f'tr[data-job="{job.pk}"]')
    assert row.locator(".bar").get_attribute("aria-valuenow") == "25"
    assert first.value.status == 200  # the page polls the jobs API (after 2 s)

    job_progress(job_id=job.pk, done=3, total=4, message="shard 3 of 4")
    page.wait_for_function(f'document.querySelector(\'tr[data-job="{job.pk}"] .bar\').getAttribute("aria-valuenow") == "75"',
                           timeout=10_000)
    assert row.locator(".message").inner_text() == "shard 3 of 4"
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, done=4)
    page.wait_for_function(f'document.querySelector(\'tr[data-job="{job.pk}"] .status\').textContent == "succeeded"',
                           timeout=10_000)
    assert row.locator(".bar").get_attribute("aria-valuenow") == "100"
    _shot(page, "home-job-progress")
