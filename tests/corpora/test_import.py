from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from browser.catalog.models import Model, Tokenizer
from browser.corpora.models import Context, Corpus, Document
from browser.corpora.selectors import decode_tokens
from tests.conftest import FIXTURE_CORPUS
from workers.compute import loading, tokenize


def _import(path: Path, name: str = "c", **opts: object) -> None:
    call_command("import_corpus", str(path), name=name, inline=True, **opts)


def _snapshot() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (Corpus, Document, Context, Model, Tokenizer))


def test_jsonl_import_tokenizes_into_contexts(minilm: Model, settings: object) -> None:
    _import(FIXTURE_CORPUS, "small", context_length=32)
    corpus = Corpus.objects.get(name="small")
    assert corpus.status == Corpus.Status.READY
    assert corpus.n_documents == 20
    tok = loading.load_tokenizer("minilm-l6", Path(settings.CACHE_DIR))  # type: ignore[attr-defined]
    contexts = list(Context.objects.filter(corpus=corpus).order_by("index"))
    assert [c.index for c in contexts] == list(range(corpus.n_contexts))
    first_doc = Document.objects.get(corpus=corpus, index=0)
    ids = tokenize.tokenize_batch(tok, [first_doc.text])[0]
    rebuilt = []
    for ctx in contexts:
        if ctx.document_id != first_doc.pk:
            break
        tokens = decode_tokens(bytes(ctx.tokens))
        assert len(tokens) == ctx.n_tokens <= 32
        assert tokens[0] == tok.cls_token_id and tokens[-1] == tok.sep_token_id
        rebuilt.extend(tokens[1:-1])
    assert rebuilt == ids
    assert corpus.n_tokens == sum(c.n_tokens for c in contexts)


def test_text_file_and_directory(minilm: Model, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("To be, or not to be, that is the question.")
    folder = tmp_path / "many"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Friends, Romans, countrymen.")
    (folder / "sub" / "b.md").write_text("Now is the winter of our discontent.")
    _import(tmp_path / "one.txt", "one")
    _import(folder, "many")
    assert Corpus.objects.get(name="one").n_documents == 1
    many = Corpus.objects.get(name="many")
    assert many.n_documents == 2
    assert sorted(Document.objects.filter(corpus=many).values_list("external_id", flat=True)) == ["a.txt", "sub/b.md"]


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "blank.txt").write_text("   \n")
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    good = json.dumps({"text": "fine"})
    (tmp_path / "broken.jsonl").write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    (tmp_path / "notext.jsonl").write_text(f'{good}\n{{"body": "x"}}\n')
    (tmp_path / "emptydir").mkdir()
    return {
        "missing": (tmp_path / "nope.jsonl", "no such file or directory"),
        "empty jsonl": (tmp_path / "empty.jsonl", "holds no text"),
        "blank text": (tmp_path / "blank.txt", "holds no text"),
        "empty dir": (tmp_path / "emptydir", "empty directory"),
        "binary": (tmp_path / "binary.txt", "binary file"),
        "invalid utf-8": (tmp_path / "latin1.txt", "not valid UTF-8 (bad byte at offset 3)"),
        "malformed line": (tmp_path / "broken.jsonl", "line 3: not valid JSON"),
        "no text field": (tmp_path / "notext.jsonl", 'line 2: each line must be a JSON object with a "text"'),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "empty jsonl", "blank text", "empty dir", "binary", "invalid utf-8", "malformed line", "no text field"],
)
def test_bad_input_is_refused_and_writes_nothing(case: str, minilm: Model, tmp_path: Path) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    before = _snapshot()
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _import(path, "bad")
    assert _snapshot() == before


def test_duplicate_name_is_refused(minilm: Model, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Once more unto the breach.")
    _import(tmp_path / "a.txt", "dup")
    before = _snapshot()
    with pytest.raises(CommandError, match="a corpus named 'dup' already exists"):
        _import(tmp_path / "a.txt", "dup")
    assert _snapshot() == before


def test_unknown_tokenizer_is_refused(db: None, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Once more unto the breach.")
    before = _snapshot()
    with pytest.raises(CommandError, match="unknown model 'no-such-model'.*minilm-l6"):
        _import(tmp_path / "a.txt", "x", tokenizer="no-such-model")
    assert _snapshot() == before


def test_bad_name_and_context_length_are_refused(minilm: Model, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Once more unto the breach.")
    before = _snapshot()
    with pytest.raises(CommandError, match="name: Use letters"):
        _import(tmp_path / "a.txt", "bad name!")
    with pytest.raises(CommandError, match="context length must be between"):
        _import(tmp_path / "a.txt", "ok", context_length=100000)
    assert _snapshot() == before
