"""Machine labels through a pluggable explainer.

The default explainer works offline: it summarizes which tokens a unit fires on most and quotes
a short window of its best context. An OpenAI-compatible chat endpoint can be configured
(``BROWSER_EXPLAINER_URL``); it is never required. Machine labels are written as a system user
named after the explainer and marked ``machine``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings

from browser.accounts.services import machine_user
from browser.catalog.models import Unit
from browser.examples.selectors import ExampleView, unit_examples
from browser.labels.models import Label
from browser.labels.services import MAX_TEXT, label_save

WINDOW = 6  # tokens quoted on each side of the max token
TIMEOUT_S = 30


class ExplainerError(RuntimeError):
    """The configured endpoint failed or answered something unusable."""


@dataclass(frozen=True)
class Evidence:
    top_tokens: list[tuple[str, int]]
    """(token, how many top examples peak on it), most common first."""
    n_examples: int
    windows: list[str]
    """Short windows around the max token, the max token in [[ ]]."""


def evidence(unit: Unit, *, n: int = 20) -> Evidence | None:
    examples = unit_examples(unit, kinds=(0,), top_limit=n)
    if not examples:
        return None
    peaks = Counter(_token(e, e.max_pos).strip() or repr(_token(e, e.max_pos)) for e in examples)
    return Evidence(peaks.most_common(5), len(examples), [_window(e) for e in examples[:5]])


def _token(example: ExampleView, pos: int) -> str:
    return example.vocab.token(example.token_ids[pos]) if 0 <= pos < len(example.token_ids) else ""


def _window(example: ExampleView) -> str:
    lo, hi = max(0, example.max_pos - WINDOW), min(len(example.token_ids), example.max_pos + WINDOW + 1)
    special = example.vocab.special
    parts = [f"[[{_token(example, p)}]]" if p == example.max_pos else _token(example, p)
             for p in range(lo, hi) if example.token_ids[p] not in special or p == example.max_pos]
    return "".join(parts).replace("\n", " ").strip()


def offline_explanation(ev: Evidence) -> str:
    (first, count), *rest = ev.top_tokens
    also = ", ".join(f"“{t}”" for t, _ in rest[:3])
    text = f"Fires most on “{first}” ({count} of {ev.n_examples} top examples)"
    text += f"; also {also}." if also else "."
    return f"{text} E.g. “{ev.windows[0]}”"[:MAX_TEXT]


def openai_explanation(ev: Evidence) -> str:
    """Ask an OpenAI-compatible chat endpoint for a one-line explanation."""
    prompt = ("Here are text windows where one neuron of a language model fires most; its peak token is in "
              "[[double brackets]]. Say in one short phrase what the neuron detects.\n\n"
              + "\n".join(f"- {w}" for w in ev.windows))
    body = json.dumps({"model": settings.BROWSER_EXPLAINER_MODEL, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(settings.BROWSER_EXPLAINER_URL.rstrip("/") + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {settings.BROWSER_EXPLAINER_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (configured URL)
            answer = json.loads(response.read())
        text = answer["choices"][0]["message"]["content"].strip()
    except (urllib.error.URLError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ExplainerError(f"the explainer at {settings.BROWSER_EXPLAINER_URL} failed: {exc}") from exc
    if not text:
        raise ExplainerError("the explainer answered an empty text")
    return text[:MAX_TEXT]


def explainer() -> tuple[str, Callable[[Evidence], str]]:
    """(name, function) of the configured explainer."""
    if settings.BROWSER_EXPLAINER_URL:
        return f"explainer-{settings.BROWSER_EXPLAINER_MODEL}"[:150], openai_explanation
    return "explainer-offline", offline_explanation


def units_explain(*, units: Iterable[Unit], overwrite: bool = False) -> dict[str, int]:
    """Write a machine label on each unit that has examples; returns counts of what happened."""
    name, explain = explainer()
    user = machine_user(name=name)
    counts = {"labeled": 0, "skipped": 0, "no_examples": 0}
    for unit in units:
        if not overwrite and Label.objects.filter(unit=unit, author=user).exists():
            counts["skipped"] += 1
            continue
        ev = evidence(unit)
        if ev is None:
            counts["no_examples"] += 1
            continue
        label_save(unit=unit, user=user, text=explain(ev), machine=True)
        counts["labeled"] += 1
    return counts
