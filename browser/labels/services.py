"""Writes of labels. Every write checks the access layer, keeps a revision, and refreshes the
unit's label count and search vector in the same transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction

from browser.accounts import access
from browser.catalog.models import Unit
from browser.catalog.uids import storable, unit_by_uid
from browser.labels.models import Label, LabelRevision
from browser.search.services import embedding_queue

MAX_TEXT = 2000
MAX_TAGS = 20
MAX_TAG = 50


class LabelConflict(Exception):
    """The label changed since the editor read it (their revision is not the current one)."""

    def __init__(self, current: Label | None) -> None:
        self.current = current
        revision = current.revision if current is not None else 0
        super().__init__(f"the label is at revision {revision}; reload it and apply your edit again")


def clean_text(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError({"text": "a label needs some text"})
    if len(text) > MAX_TEXT:
        raise ValidationError({"text": f"a label is at most {MAX_TEXT} characters (this one has {len(text)})"})
    if not storable(text):
        raise ValidationError({"text": "a label cannot contain the NUL character or a lone surrogate"})
    return text


def clean_tags(tags: Any) -> list[str]:
    if tags is None or tags == "":
        return []
    if isinstance(tags, str):
        tags = [t for t in (s.strip() for s in tags.split(",")) if t]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValidationError({"tags": "tags are a list of strings"})
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG for t in tags):
        raise ValidationError({"tags": f"at most {MAX_TAGS} tags of at most {MAX_TAG} characters"})
    if not all(storable(t) for t in tags):
        raise ValidationError({"tags": "a tag cannot contain the NUL character or a lone surrogate"})
    return list(dict.fromkeys(t.strip() for t in tags if t.strip()))


def clean_confidence(confidence: Any) -> float | None:
    if confidence is None or confidence == "":
        return None
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        raise ValidationError({"confidence": "confidence is a number between 0 and 1"}) from None
    if not 0.0 <= value <= 1.0:
        raise ValidationError({"confidence": "confidence is a number between 0 and 1"})
    return value


def _snapshot(label: Label) -> dict[str, Any]:
    return {"text": label.text, "tags": label.tags, "confidence": label.confidence, "machine": label.machine}


def unit_refresh_labels(unit_id: int) -> None:
    """Label count and the full-text search vector (top token + every label) of one unit.

    The unit row is locked first, in its own statement: the UPDATE then reads the labels with a
    snapshot taken after any other writer of this unit committed. (A single UPDATE that waits for
    the row lock re-checks the row but aggregates the labels as of its start, so two concurrent
    label writes, or a finalize and a label write, could each leave out the other's text.)
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM catalog_unit WHERE id = %s FOR UPDATE", [unit_id])
        cursor.execute(
            """
            UPDATE catalog_unit u
               SET label_count = l.n,
                   search_text = trim(u.top_token || ' ' || l.texts),
                   search = to_tsvector('simple', trim(u.top_token || ' ' || l.texts))
              FROM (SELECT count(*) AS n, coalesce(string_agg(text, ' ' ORDER BY id), '') AS texts
                      FROM labels_label WHERE unit_id = %s) l
             WHERE u.id = %s
            """,
            [unit_id, unit_id],
        )
    embedding_queue(unit_ids=[unit_id])  # semantic search re-embeds the unit once this commits


@transaction.atomic
def label_save(*, unit: Unit, user: Any, text: Any, tags: Any = None, confidence: Any = None,
               revision: int | None = None, author: Any = None, machine: bool = False) -> Label:
    """Create or edit ``author``'s label of ``unit`` (the acting user's own by default).

    ``revision`` is the revision the editor read (0 for "I saw no label"); a mismatch raises
    LabelConflict, so concurrent edits are detected, never silently lost. None skips the check.
    """
    if not access.can_label(user):
        raise PermissionDenied("labeling needs the annotator role")
    author = author or user
    values = {"text": clean_text(text), "tags": clean_tags(tags), "confidence": clean_confidence(confidence),
              "machine": machine}
    label = Label.objects.select_for_update().filter(unit=unit, author=author).first()
    if label is None:
        if not (access.can_label(user) if author.pk == user.pk else access.can_moderate(user)):
            raise PermissionDenied("labeling needs the annotator role")
        if revision not in (None, 0):
            raise LabelConflict(None)
        try:
            with transaction.atomic():
                label = Label.objects.create(unit=unit, author=author, revision=1, **values)
        except IntegrityError:  # another request created it between our read and write
            raise LabelConflict(Label.objects.filter(unit=unit, author=author).first()) from None
        LabelRevision.objects.create(label=label, unit=unit, author=author, editor=user, revision=1,
                                     action=LabelRevision.Action.CREATE, before=None, after=_snapshot(label))
    else:
        if not access.can_edit_label(user, label):
            raise PermissionDenied("you may only edit your own labels")
        if revision is not None and revision != label.revision:
            raise LabelConflict(label)
        before = _snapshot(label)
        for key, value in values.items():
            setattr(label, key, value)
        label.revision += 1
        label.save()
        LabelRevision.objects.create(label=label, unit=unit, author=author, editor=user, revision=label.revision,
                                     action=LabelRevision.Action.UPDATE, before=before, after=_snapshot(label))
    unit_refresh_labels(unit.pk)
    # The caller's unit and author (already read, with what they select) instead of a query each when
    # the answer is serialized (the label's unit id, source, model and author name).
    label.unit, label.author = unit, author
    return label


@transaction.atomic
def label_delete(*, label: Label, user: Any, revision: int | None = None) -> None:
    locked = Label.objects.select_for_update().filter(pk=label.pk).first()
    if locked is None:
        raise LabelConflict(None)
    if not access.can_edit_label(user, locked):
        raise PermissionDenied("you may only delete your own labels")
    if revision is not None and revision != locked.revision:
        raise LabelConflict(locked)
    LabelRevision.objects.create(label=None, unit_id=locked.unit_id, author_id=locked.author_id, editor=user,
                                 revision=locked.revision + 1, action=LabelRevision.Action.DELETE,
                                 before={**_snapshot(locked), "label_id": locked.pk}, after=None)
    LabelRevision.objects.filter(label=locked).update(label=None)
    locked.delete()
    unit_refresh_labels(locked.unit_id)


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "created": self.created, "updated": self.updated,
                "errors": self.errors, "dry_run": self.dry_run, "applied": not self.dry_run and not self.errors}


def labels_import(*, rows: Iterable[Mapping[str, Any]], user: Any, dry_run: bool = False,
                  max_rows: int = 100_000) -> ImportReport:
    """Bulk labels for the acting user: every row is validated first; any error means nothing is
    written (the report lists each bad row with its line and reason)."""
    if not access.can_label(user):
        raise PermissionDenied("labeling needs the annotator role")
    report = ImportReport(dry_run=dry_run)
    clean: list[tuple[Unit, Any]] = []
    for line, row in enumerate(rows, start=1):
        report.rows += 1
        if report.rows > max_rows:
            report.errors.append({"line": line, "error": f"more than {max_rows} rows; split the file"})
            break
        try:
            unit = unit_by_uid(str(row.get("unit", "")))
            values = (clean_text(row.get("text")), clean_tags(row.get("tags")),
                      clean_confidence(row.get("confidence")))
        except ValidationError as exc:
            report.errors.append({"line": line, "error": "; ".join(exc.messages)})
            continue
        clean.append((unit, values))
    if report.errors or dry_run:
        return report
    with transaction.atomic():
        # Every unit locked up front in id order, as a finalize locks them: two multi-unit
        # writers then wait for each other instead of deadlocking.
        list(Unit.objects.select_for_update().filter(pk__in={u.pk for u, _ in clean}).order_by("pk")
             .values_list("pk", flat=True))
        for unit, (text, tags, confidence) in clean:
            existed = Label.objects.filter(unit=unit, author=user).exists()
            label_save(unit=unit, user=user, text=text, tags=tags, confidence=confidence)
            report.updated += existed
            report.created += not existed
    return report
