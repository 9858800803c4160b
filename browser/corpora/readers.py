"""Reading corpus files: a .txt file, a directory of text files, or JSONL with a ``text`` field.

Every problem is a :class:`CorpusInputError` naming the file and, for JSONL, the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# A single document longer than this is refused: it is almost surely not prose.
MAX_DOCUMENT_CHARS = 20_000_000
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


class CorpusInputError(ValueError):
    """Bad corpus input; nothing was written."""


@dataclass(frozen=True)
class DocumentIn:
    text: str
    external_id: str = ""
    title: str = ""
    meta: dict[str, object] = field(default_factory=dict)


def _decode(data: bytes, where: str) -> str:
    if b"\x00" in data[:8192]:
        raise CorpusInputError(f"{where} looks like a binary file (it contains NUL bytes); give UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusInputError(f"{where} is not valid UTF-8 (bad byte at offset {exc.start})") from None


def _check_strings(value: object, where: str) -> None:
    """NUL and lone surrogates are legal in JSON strings but not in PostgreSQL text."""
    if isinstance(value, str):
        if "\x00" in value:
            raise CorpusInputError(f"{where}: a string contains the NUL character (\\u0000), which text cannot hold")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CorpusInputError(f"{where}: a string holds a lone surrogate (not valid UTF-8 text)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, where)


def _check_size(text: str, where: str) -> None:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise CorpusInputError(
            f"{where} has {len(text):,} characters; a document may have at most {MAX_DOCUMENT_CHARS:,}"
        )


def _text_file(path: Path, name: str) -> DocumentIn:
    text = _decode(path.read_bytes(), str(path))
    _check_size(text, str(path))
    return DocumentIn(text=text, external_id=name, title=path.name)


def _jsonl(path: Path) -> Iterator[DocumentIn]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path} line {number}"
            line = _decode(raw, where).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusInputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusInputError(f'{where}: each line must be a JSON object with a "text" string')
            _check_size(record["text"], where)
            _check_strings(record, where)
            meta = {k: v for k, v in record.items() if k not in {"text", "id", "title"}}
            yield DocumentIn(
                text=record["text"],
                external_id=str(record.get("id", ""))[:200],
                title=str(record.get("title", ""))[:500],
                meta=meta,
            )


def read_documents(path: Path) -> Iterator[DocumentIn]:
    """Yield the non-empty documents of ``path``; raises CorpusInputError on any bad input."""
    if not path.exists():
        raise CorpusInputError(f"no such file or directory: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CorpusInputError(f"{path} is an empty directory")
        docs: Iterator[DocumentIn] = (_text_file(p, str(p.relative_to(path))) for p in files)
    elif path.suffix.lower() in JSONL_SUFFIXES:
        docs = _jsonl(path)
    else:
        docs = iter([_text_file(path, path.name)])
    for doc in docs:
        if doc.text.strip():
            yield doc
