"""Machine labels: the offline explainer on a real harvest, and an OpenAI-compatible endpoint
(a local HTTP server stands in for the remote service)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Model, Unit
from browser.corpora.models import Corpus
from browser.labels.explain import evidence
from browser.labels.models import Label
from tests.harvesting import harvest_run

pytestmark = pytest.mark.slow
SOURCE = "blocks.0.mlp.hook_post"


@pytest.fixture
def harvested(tiny: Model, corpus: Corpus) -> Model:
    harvest_run(tiny, corpus, [SOURCE])
    return tiny


def test_offline_explainer_names_the_peak_token(harvested: Model) -> None:
    call_command("explain", model="tiny", source=SOURCE, limit=3, stdout=io.StringIO())
    labels = list(Label.objects.select_related("unit", "author").order_by("unit__index"))
    assert len(labels) == 3 and all(label.machine for label in labels)
    assert {label.author.username for label in labels} == {"machine:explainer-offline"}
    for label in labels:
        ev = evidence(label.unit)
        assert ev is not None
        top_token, count = ev.top_tokens[0]
        assert label.text.startswith(f"Fires most on “{top_token}” ({count} of {ev.n_examples} top examples)")
    out = io.StringIO()
    call_command("explain", model="tiny", source=SOURCE, limit=3, stdout=out)
    assert "skipped: 3" in out.getvalue() and Label.objects.count() == 3
    with pytest.raises(CommandError, match="no harvested unit"):
        call_command("explain", model="tiny", source="blocks.9.mlp.hook_post")


class _Chat(BaseHTTPRequestHandler):
    requests: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.requests.append({"path": self.path, "auth": self.headers["Authorization"], **body})
        reply = json.dumps({"choices": [{"message": {"content": " words about kings "}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_openai_compatible_endpoint(harvested: Model, chat_server: str, settings: object) -> None:
    settings.BROWSER_EXPLAINER_URL = chat_server  # type: ignore[attr-defined]
    settings.BROWSER_EXPLAINER_KEY = "sk-test"  # type: ignore[attr-defined]
    call_command("explain", model="tiny", source=SOURCE, limit=1, stdout=io.StringIO())
    label = Label.objects.get()
    assert label.text == "words about kings" and label.machine
    sent = _Chat.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert "[[" in json.dumps(sent["messages"])  # the windows mark the peak token
    settings.BROWSER_EXPLAINER_URL = "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    with pytest.raises(CommandError, match="explainer at"):
        call_command("explain", model="tiny", source=SOURCE, limit=2, overwrite=True, stdout=io.StringIO())
    assert Unit.objects.filter(label_count__gt=0).count() == 1
