"""SAE training as a Celery task on a real worker: queued, progress reported, SAE registered."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command

from browser.catalog.models import Sae, Unit
from browser.runs.models import Job
from fixtures.tiny import build_tiny_bert
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow


def test_worker_trains_an_sae(worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    model_register(location=str(build_tiny_bert(tmp_path / "tiny")), name="tiny")
    (tmp_path / "a.txt").write_text("Shall I compare thee to a summer's day? Thou art more lovely. " * 40)
    call_command("import_corpus", str(tmp_path / "a.txt"), name="c", tokenizer="tiny", context_length=16,
                 inline=True, stdout=io.StringIO())
    out = io.StringIO()
    call_command("train_sae", model="tiny", corpus="c", hook="blocks.1.mlp.hook_post", name="w-sae", width=32,
                 k=4, steps=40, batch_tokens=32, buffer_tokens=128, wait=True, stdout=out)
    assert "No worker answered" not in out.getvalue()
    job = Job.objects.get(kind=Job.Kind.TRAIN_SAE)
    assert (job.status, job.attempts, job.done, job.total) == (Job.Status.SUCCEEDED, 1, 40, 40)
    row = Sae.objects.get(source__name="w-sae")
    assert row.quality["l0"] <= 4 and len(row.loss_curve) == 5
    assert Unit.objects.filter(source=row.source).count() == 32
