from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from browser.catalog.models import Sae, Score
from browser.core import embedded
from browser.corpora.models import Corpus
from browser.runs.models import Run

FIXTURE_CORPUS = Path(settings.BASE_DIR) / "fixtures" / "shakespeare-small.jsonl"
DEMO_USER, DEMO_PASSWORD = "demo", "demo-password"
DEMO_SAE = "blocks.3.mlp.sae-topk-2048"


class Command(BaseCommand):
    help = (
        "Run the whole demo: migrate, start a Celery worker, run the demo pipeline (skipping what is "
        "already done), and serve the site until Ctrl-C, which stops the worker and embedded servers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-serve", action="store_true", help="run the pipeline, then stop")

    def handle(self, *args: Any, **opts: Any) -> None:
        call_command("migrate", verbosity=0)
        call_command("collectstatic", verbosity=0, interactive=False)
        self._demo_user()
        children = [self._start_worker()]
        try:
            self._pipeline()
            if opts["no_serve"]:
                return
            children.append(self._start_web(opts["port"]))
            self.stdout.write(
                f"\nThe browser is up at http://127.0.0.1:{opts['port']}/\n"
                f"Sign in as {DEMO_USER} / {DEMO_PASSWORD}. Ctrl-C stops everything.\n"
            )
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping.\n")
        finally:
            self._stop(children)

    def _demo_user(self) -> None:
        user_model = get_user_model()
        if not user_model.objects.filter(username=DEMO_USER).exists():
            user_model.objects.create_superuser(DEMO_USER, "demo@example.org", DEMO_PASSWORD)

    def _start_worker(self) -> subprocess.Popen[bytes]:
        log = open(Path(settings.DATA_DIR) / "worker.log", "ab")
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "gpu,default",
             "--pool", "solo", "--concurrency", "1", "-n", f"demo-{os.getpid()}@%h", "--loglevel", "info"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _start_web(self, port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "browser.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "4", "--access-logfile", "-"],
            start_new_session=True,
        )

    def _pipeline(self) -> None:
        """Every step skips what an earlier demo finished (the harvest run is found by its config hash)."""
        if not Corpus.objects.filter(name="demo", status=Corpus.Status.READY).exists():
            Corpus.objects.filter(name="demo").delete()
            call_command("import_corpus", str(FIXTURE_CORPUS), name="demo", tokenizer="minilm-l6")
        else:
            self.stdout.write("Corpus 'demo' is already imported.\n")
        self._sae()
        # One run for the neurons and the SAE's features: the harvest then keeps the correlation
        # sums between the features and layer 3's neurons, which the score job turns into the
        # comparison tables.
        call_command("harvest", model="minilm-l6", corpus="demo", hooks="blocks.*.mlp.hook_post", saes=DEMO_SAE,
                     k=32, wait=True)
        self._score()

    def _sae(self) -> None:
        """A small TopK SAE on layer 3's neurons (400 steps of 512 tokens: about 40 s on 2 idle CPU cores,
        held-out FVU about 0.35)."""
        if not Sae.objects.filter(source__model__name="minilm-l6", source__name=DEMO_SAE).exists():
            call_command("train_sae", model="minilm-l6", corpus="demo", hook="blocks.3.mlp.hook_post", name=DEMO_SAE,
                         width=2048, k=32, steps=400, batch_tokens=512, buffer_tokens=8192, reuse=4, wait=True)
        else:
            self.stdout.write(f"SAE {DEMO_SAE!r} is already trained.\n")

    def _score(self) -> None:
        """Every unit's scores and the neuron-feature comparisons (a few minutes on 2 CPU cores)."""
        run = (Run.objects.filter(model__name="minilm-l6", corpus__name="demo", status=Run.Status.DONE,
                                  sources__name=DEMO_SAE).order_by("-pk").first())
        if run is None:
            self.stdout.write("No finished demo run to score.\n")
        elif Score.objects.filter(run=run).exists():
            self.stdout.write(f"Run #{run.pk} is already scored.\n")
        else:
            call_command("score", run=run.pk, wait=True)

    def _stop(self, children: list[subprocess.Popen[bytes]]) -> None:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        if settings.EMBEDDED:
            embedded.stop(Path(settings.DATA_DIR))
            self.stdout.write("Stopped the worker and the embedded PostgreSQL and Redis.\n")
