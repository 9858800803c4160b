"""The items of a unit's label panel (each label, each revision of the history), rendered once per
content and kept in the cache (``browser.core.fragments``).

A hot unit carries a label from every annotator and a history of their edits: rendering them
(dates, filters, tens of items) was most of the unit page's CPU once its run parts were cached
(browser/catalog/fragments.py). On such a unit a label changes more often than the page is viewed,
so the panel as a whole would rarely be found again; its items are: an edit changes one label and
adds one revision. The labels and revisions are still read from the database on every view, so a
write shows at once. The rest of the panel (consensus, the visitor's own form) is rendered each time.
"""

from __future__ import annotations

from typing import Any

from django.utils.safestring import SafeString

from browser.core.fragments import cached_items

VERSION = 1  # bump when _label.html or _revision.html change what they show


def _label_content(label: Any) -> tuple[Any, ...]:
    """What ``labels/_label.html`` shows of a label (with its author's name and label AUC scores)."""
    return (label.pk, label.text, label.tags, label.confidence, label.machine, label.revision,
            label.updated.isoformat(), label.author.username,
            [(s.pk, s.value) for s in getattr(label, "label_scores", ())])


def _revision_content(r: Any) -> tuple[Any, ...]:
    """What ``labels/_revision.html`` shows of a revision (with its author's and editor's names)."""
    return (r.pk, r.at.isoformat(), r.editor.username if r.editor else None, r.action, r.author.username,
            r.revision, r.after)


def label_panel_parts(panel: dict[str, Any]) -> dict[str, SafeString]:
    """The rendered labels and history of ``panel`` (``browser.labels.selectors.label_panel``)."""
    return {
        "labels": cached_items(f"label-v{VERSION}", panel["labels"], _label_content, "labels/_label.html",
                               lambda label: {"label": label}),
        "history": cached_items(f"revision-v{VERSION}", panel["history"], _revision_content,
                                "labels/_revision.html", lambda r: {"r": r}),
    }
