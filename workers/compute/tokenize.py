"""Tokenizing documents into fixed-length contexts, and display strings for every token id."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class ContextLayout:
    """The special tokens wrapped around every context, as the model expects them."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    length: int

    @property
    def body(self) -> int:
        return self.length - len(self.prefix) - len(self.suffix)


def layout_for(tokenizer: Any, context_length: int, causal: bool) -> ContextLayout:
    """BERT-style encoders get ``[CLS] ... [SEP]``; causal LMs get a BOS token when they have one."""
    if causal:
        bos = tokenizer.bos_token_id
        prefix: tuple[int, ...] = (bos,) if bos is not None else ()
        suffix: tuple[int, ...] = ()
    else:
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        prefix = (cls_id,) if cls_id is not None else ()
        suffix = (sep_id,) if sep_id is not None else ()
    layout = ContextLayout(prefix, suffix, context_length)
    if layout.body < 1:
        raise ValueError(f"context length {context_length} leaves no room for text after the special tokens")
    return layout


def chunk(ids: list[int], layout: ContextLayout) -> Iterator[list[int]]:
    """Split one document's token ids into contexts; the last one may be shorter."""
    for start in range(0, len(ids), layout.body):
        yield [*layout.prefix, *ids[start : start + layout.body], *layout.suffix]


def tokenize_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table (byte-level BPE writes bytes as these chars)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = type(getattr(backend, "decoder", None)).__name__
    if decoder == "ByteLevel":
        return "bytelevel"
    if decoder == "WordPiece":
        return "wordpiece"
    if decoder in {"Metaspace", "Sequence"}:
        return "metaspace"
    return "plain"


def _printable(text: str) -> str:
    """Control characters as their visible Unicode pictures (U+2400...): PostgreSQL cannot store
    NUL in text or JSON, and a browser shows nothing for the others. Tab and newline stay."""
    return "".join(
        chr(0x2400 + ord(ch)) if ord(ch) < 0x20 and ch not in "\t\n\r" else ("\u2421" if ch == "\x7f" else ch)
        for ch in text
    )


def display_strings(tokenizer: Any) -> list[str]:
    """What each token id looks like in running text, whitespace included."""
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    kind = _decoder_kind(tokenizer)
    table = _byte_decoder()
    out: list[str] = []
    for token_id, token in enumerate(raw):
        token = token or ""
        if token_id in special:
            out.append(token)
        elif kind == "bytelevel":
            out.append(bytes(table.get(ch, ord("?")) for ch in token).decode("utf-8", errors="replace"))
        elif kind == "wordpiece":
            out.append(token[2:] if token.startswith("##") else " " + token)
        elif kind == "metaspace":
            out.append(token.replace("▁", " "))
        else:
            out.append(token)
    return [_printable(text) for text in out]


def vocab_hash(tokens: Iterable[str], special_ids: Iterable[int]) -> str:
    payload = json.dumps([list(tokens), sorted(special_ids)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()
