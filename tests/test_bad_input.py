"""The catalogue of bad input: each case gets a clear command-line error and leaves every table
of the database as it was.

Covered elsewhere, by reference (not repeated here):

- corpus files: missing, empty, blank, empty directory, binary, invalid UTF-8, malformed JSONL
  line, no "text" field, duplicate name, unknown tokenizer, bad name, absurd context length:
  ``tests/corpora/test_import.py::test_bad_input_is_refused_and_writes_nothing`` and the tests
  after it;
- harvest: unknown model and corpus, invalid hooks, k of 0 and 10**6, batch size 0, unknown
  device, a tokenizer mismatch: ``tests/workers/test_harvest.py::test_bad_harvest_input_is_refused``
  and ``test_tokenizer_mismatch_is_refused``.

This module adds corrupt and extreme corpora, harvest sizes and names, injection strings in
every text argument, and the ``job`` command. SAE and label/API cases join it as they land.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Model
from browser.corpora.models import Corpus, Document
from browser.corpora.readers import MAX_DOCUMENT_CHARS

INJECTIONS = [
    "x'; DROP TABLE corpora_corpus; --",
    'x" OR 1=1 --',
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "{{ settings.SECRET_KEY }}",
]
NUL_NAME = pytest.param("x\x00y", id="nul")


def _counts() -> dict[str, int]:
    """Rows of every table of the product (and Django's own)."""
    return {m._meta.db_table: m._default_manager.count() for m in apps.get_models()}


def _refused(command: str, *args: object, match: str, **opts: object) -> str:
    """Run the command, expect a CommandError matching ``match``, check no table changed."""
    before = _counts()
    with pytest.raises(CommandError, match=match) as caught:
        call_command(command, *[str(a) for a in args], stdout=io.StringIO(), **opts)
    assert _counts() == before
    return str(caught.value)


@pytest.fixture
def lines(minilm: Model, tmp_path: Path) -> Corpus:
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question. " * 20)
    call_command("import_corpus", str(tmp_path / "a.txt"), name="lines", context_length=32, inline=True,
                 stdout=io.StringIO())
    return Corpus.objects.get(name="lines")


# ---- corpora -------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("truncated.jsonl", '{"text": "fine"}\n{"text": "cut of', "line 2: not valid JSON"),
        ("number.jsonl", '{"text": 5}\n', 'line 1: each line must be a JSON object with a "text" string'),
        ("list.jsonl", '["text"]\n', 'line 1: each line must be a JSON object with a "text" string'),
        ("empty-docs.jsonl", '{"text": ""}\n{"text": "   "}\n', "holds no text"),
        pytest.param("nul.jsonl", '{"text": "a\\u0000b"}\n', "NUL"),
        pytest.param("surrogate.jsonl", '{"text": "a\\ud800b"}\n', "not valid UTF-8|surrogate"),
        ("cp1252.txt", "smart \u201cquotes\u201d".encode("cp1252"), "not valid UTF-8"),
        ("utf16.txt", "hello".encode("utf-16"), "not valid UTF-8|binary"),
    ],
)
def test_corrupt_corpus_files_are_refused(name: str, content: str | bytes, message: str, minilm: Model,
                                          tmp_path: Path) -> None:
    _refused("import_corpus", _write(tmp_path, name, content), name="c", inline=True, match=message)


def test_a_huge_document_is_refused(minilm: Model, tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with open(path, "w") as handle:
        handle.write("a" * (MAX_DOCUMENT_CHARS + 1))
    _refused("import_corpus", path, name="huge", inline=True, match=f"at most {MAX_DOCUMENT_CHARS:,}")


@pytest.mark.parametrize("bad_name", [*INJECTIONS, NUL_NAME, "", " ", "a" * 300])
def test_injection_and_absurd_corpus_names_are_refused(bad_name: str, minilm: Model, tmp_path: Path) -> None:
    path = _write(tmp_path, "a.txt", "Once more unto the breach.")
    _refused("import_corpus", path, name=bad_name, inline=True, match="name")


@pytest.mark.parametrize("length", [0, 1, -5, 10**9])
def test_absurd_context_lengths_are_refused(length: int, minilm: Model, tmp_path: Path) -> None:
    path = _write(tmp_path, "a.txt", "Once more unto the breach.")
    _refused("import_corpus", path, name="c", inline=True, context_length=length, match="context length must be")


def test_injection_strings_inside_documents_are_stored_as_text(minilm: Model, tmp_path: Path) -> None:
    rows = [{"id": s[:40], "title": s, "text": f"A line with {s} inside."} for s in INJECTIONS]
    path = _write(tmp_path, "inj.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    call_command("import_corpus", str(path), name="inj", inline=True, stdout=io.StringIO())
    docs = Document.objects.filter(corpus__name="inj").order_by("index")
    assert [d.title for d in docs] == [r["title"] for r in rows]
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert Corpus.objects.count() == 1  # nothing was dropped


# ---- models, hooks, sizes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "gpt-17-ultra"}, "unknown model 'gpt-17-ultra'"),
        ({"model": "/no/such/dir"}, "unknown model|no such|not found|does not exist"),
        ({"hooks": ""}, "no hook points given"),
        ({"hooks": "blocks.*.nope"}, "hook"),
        ({"hooks": "blocks.-1.mlp.hook_post"}, "unknown hook point"),
        ({"hooks": "blocks.0.mlp.hook_post; DROP TABLE catalog_unit"}, "unknown hook point"),
        ({"k": -1}, "k must be between 1 and 1024"),
        ({"batch_size": 10**7}, "batch size must be between"),
        ({"shard_contexts": 0}, "shard size positive"),
        ({"shard_contexts": -100}, "shard size positive"),
        ({"dtype": "int3"}, "dtype must be"),
    ],
)
def test_bad_harvest_options_are_refused(options: dict[str, object], message: str, lines: Corpus) -> None:
    args = {"model": "minilm-l6", "corpus": "lines", "hooks": "blocks.0.mlp.hook_post", "inline": True, **options}
    _refused("harvest", match=message, **args)


@pytest.mark.parametrize("injection", [*INJECTIONS, NUL_NAME])
def test_injection_strings_as_model_and_corpus_names_are_refused(injection: str, lines: Corpus) -> None:
    _refused("harvest", model="minilm-l6", corpus=injection, inline=True, match="no corpus named")
    _refused("harvest", model=injection, corpus="lines", inline=True, match="unknown model|no such|not found")


# ---- jobs ----------------------------------------------------------------------------------------
def test_the_job_command_refuses_unknown_jobs_and_absurd_limits(db: None) -> None:
    _refused("job", "cancel", 987654, match="no job with id 987654")
    _refused("job", "show", 987654, match="no job with id 987654")
    _refused("job", "list", "--limit", 0, match="--limit must be between 1 and 1000")
    _refused("job", "list", "--limit", 10**9, match="--limit must be between 1 and 1000")
