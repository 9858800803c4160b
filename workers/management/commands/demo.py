from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from browser.accounts.models import Role
from browser.accounts.services import user_create
from browser.catalog.models import Sae, Score
from browser.core import embedded
from browser.corpora.models import Corpus
from browser.corpora.services import corpus_delete
from browser.runs.models import Run
from workers.celery import worker_argv
from workers.children import Children, PidFiles, Stopped, alive, signals_ignored, stop_group, stop_on_signals
from workers.demo_causal import causal_demo, phase

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
        parser.add_argument("--serve-only", action="store_true",
                            help="skip the pipeline: start the worker and serve what earlier demos computed")

    def handle(self, *args: Any, **opts: Any) -> None:
        """Ctrl-C, SIGTERM and SIGHUP all stop the worker, the web server and the embedded servers.
        What an earlier demo left running (it was killed outright) is found by its pid files under
        the data dir and stopped first; the embedded servers are reused."""
        pid_dir = Path(settings.DATA_DIR) / "demo"
        children = Children(pid_dir)
        with stop_on_signals():
            try:
                self._stop_earlier(pid_dir, children)
                PidFiles(pid_dir).write("demo", os.getpid())
                self._run(children, opts)
            except (KeyboardInterrupt, Stopped) as exc:
                self.stdout.write(f"\nStopping ({exc or 'Ctrl-C'}).\n")
            finally:
                with signals_ignored():
                    self._stop(children)

    def _run(self, children: Children, opts: dict[str, Any]) -> None:
        call_command("migrate", verbosity=0)
        call_command("collectstatic", verbosity=0, interactive=False)
        self._demo_user()
        self._start_worker(children)
        if not opts["serve_only"]:
            self._pipeline()
        if opts["no_serve"]:
            return
        self._start_web(children, opts["port"])
        self.stdout.write(
            f"\nThe browser is up at http://127.0.0.1:{opts['port']}/\n"
            f"Sign in as {DEMO_USER} / {DEMO_PASSWORD}. Ctrl-C stops everything.\n"
        )
        while not children.any_exited():
            time.sleep(0.5)

    def _stop_earlier(self, pid_dir: Path, children: Children) -> None:
        """An earlier demo still running is asked to stop (it stops its own children); children left
        by one that was killed outright are stopped here."""
        earlier = PidFiles(pid_dir).read("demo")
        if earlier is not None and earlier[0] != os.getpid() and alive(*earlier):
            self.stdout.write(f"Stopping the demo already running (pid {earlier[0]}).\n")
            stop_group(*earlier, wait_s=120, group=False)
        left = children.stop_leftovers(keep=("demo",))
        if left:
            self.stdout.write(f"Stopped what an earlier demo left running: {', '.join(left)}.\n")

    def _demo_user(self) -> None:
        if not get_user_model().objects.filter(username=DEMO_USER).exists():
            user_create(username=DEMO_USER, password=DEMO_PASSWORD, role=Role.ADMIN, email="demo@example.org",
                        superuser=True)

    def _start_worker(self, children: Children) -> None:
        with open(Path(settings.DATA_DIR) / "worker.log", "ab") as log:
            children.start("worker", worker_argv(node=f"demo-{os.getpid()}"), stdout=log, stderr=subprocess.STDOUT)

    def _start_web(self, children: Children, port: int) -> None:
        children.start("web", [
            sys.executable, "-m", "gunicorn", "browser.wsgi:application", "-c", "python:browser.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}", "--access-logfile", "-"])

    def _pipeline(self) -> None:
        """Every step skips what an earlier demo finished (the harvest run is found by its config hash)."""
        start = time.perf_counter()
        if not Corpus.objects.filter(name="demo", status=Corpus.Status.READY).exists():
            corpus_delete(name="demo")
            with phase(self.stdout, "import demo"):
                call_command("import_corpus", str(FIXTURE_CORPUS), name="demo", tokenizer="minilm-l6")
        else:
            self.stdout.write("Corpus 'demo' is already imported.\n")
        with phase(self.stdout, f"train minilm-l6 {DEMO_SAE}"):
            self._sae()
        # One run for the neurons and the SAE's features: the harvest then keeps the correlation
        # sums between the features and layer 3's neurons, which the score job turns into the
        # comparison tables.
        with phase(self.stdout, "harvest minilm-l6"):
            call_command("harvest", model="minilm-l6", corpus="demo", hooks="blocks.*.mlp.hook_post", saes=DEMO_SAE,
                         k=32, wait=True)
        with phase(self.stdout, "score minilm-l6"):
            self._score()
        causal_demo(self.stdout)  # SmolLM2 with an SAE, so steering works in the demo
        # Each harvest queued its sources' search vectors at the lowest priority (so the score job and
        # the next steps went first): the worker computes them next, while the site is up.
        self.stdout.write(f"[demo] pipeline: {time.perf_counter() - start:.0f} s\n")

    def _sae(self) -> None:
        """A small TopK SAE on layer 3's neurons (400 steps of 512 tokens: about 40 s on 2 idle CPU cores,
        held-out FVU about 0.35)."""
        if not Sae.objects.filter(source__model__name="minilm-l6", source__name=DEMO_SAE).exists():
            call_command("train_sae", model="minilm-l6", corpus="demo", hook="blocks.3.mlp.hook_post", name=DEMO_SAE,
                         width=2048, k=32, steps=400, batch_tokens=512, buffer_tokens=8192, reuse=4, wait=True)
        else:
            self.stdout.write(f"SAE {DEMO_SAE!r} is already trained.\n")

    def _score(self) -> None:
        """Every unit's scores and the neuron-feature comparisons (MiniLM embeddings of the units'
        example windows are most of it)."""
        run = (Run.objects.filter(model__name="minilm-l6", corpus__name="demo", status=Run.Status.DONE,
                                  sources__name=DEMO_SAE).order_by("-pk").first())
        if run is None:
            self.stdout.write("No finished demo run to score.\n")
        elif Score.objects.filter(run=run).exists():
            self.stdout.write(f"Run #{run.pk} is already scored.\n")
        else:
            call_command("score", run=run.pk, wait=True)

    def _stop(self, children: Children) -> None:
        children.stop_all()
        if settings.EMBEDDED:
            embedded.stop(Path(settings.DATA_DIR))
            self.stdout.write("Stopped the worker and the embedded PostgreSQL and Redis.\n")
        PidFiles(Path(settings.DATA_DIR) / "demo").remove("demo")
