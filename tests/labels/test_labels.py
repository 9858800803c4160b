"""Labels through the API, with the fixed cast: who may write what, revisions, conflicts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from browser.catalog.models import Unit
from browser.labels.models import Label, LabelRevision
from browser.labels.services import label_save
from tests.conftest import Cast

UID = "toyish/blocks.1.mlp.hook_post/{}"
HOSTILE = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "<b>bold</b> & {{ template }} {% tag %}",
    "line\x07bell\x1b[31mred\u202eevil",
    "x" * 2000,
]


def _create(cast: Cast, who: str, index: int = 0, text: str = "fires on commas") -> object:
    return cast.client(who).post("/api/v1/labels/", {"unit": UID.format(index), "text": text}, format="json")


@pytest.mark.parametrize(("who", "status"), [("owner", 201), ("collaborator", 201), ("curator", 201),
                                             ("outsider", 403), ("anonymous", 401)])
def test_create_needs_the_annotator_role(cast: Cast, units: list[Unit], who: str, status: int) -> None:
    response = _create(cast, who)
    assert response.status_code == status, response.content
    assert Label.objects.count() == (1 if status == 201 else 0)
    if status >= 400:
        assert set(response.json()["error"]) >= {"status", "code", "message"}


@pytest.mark.parametrize(("who", "status"), [("owner", 200), ("collaborator", 403), ("curator", 200),
                                             ("outsider", 403), ("anonymous", 401)])
def test_edit_own_label_or_moderate(cast: Cast, units: list[Unit], who: str, status: int) -> None:
    label_id = _create(cast, "owner").json()["id"]
    response = cast.client(who).patch(f"/api/v1/labels/{label_id}/", {"text": "edited", "revision": 1}, format="json")
    assert response.status_code == status, response.content
    label = Label.objects.get(pk=label_id)
    assert label.text == ("edited" if status == 200 else "fires on commas")
    assert label.author == cast.owner  # a moderator's edit keeps the author
    if status == 200:
        revision = LabelRevision.objects.get(label=label, revision=2)
        assert revision.editor == getattr(cast, who) and revision.before["text"] == "fires on commas"


@pytest.mark.parametrize(("who", "status"), [("owner", 204), ("collaborator", 403), ("curator", 204),
                                             ("outsider", 403), ("anonymous", 401)])
def test_delete_own_label_or_moderate(cast: Cast, units: list[Unit], who: str, status: int) -> None:
    label_id = _create(cast, "owner").json()["id"]
    response = cast.client(who).delete(f"/api/v1/labels/{label_id}/")
    assert response.status_code == status, response.content
    assert Label.objects.filter(pk=label_id).exists() == (status != 204)
    if status == 204:
        assert LabelRevision.objects.filter(action="delete", before__label_id=label_id).count() == 1
        assert Unit.objects.get(pk=units[0].pk).label_count == 0


def test_one_label_per_author_with_full_history(cast: Cast, units: list[Unit]) -> None:
    assert _create(cast, "owner", text="first").status_code == 201
    again = _create(cast, "owner", text="second")
    assert again.status_code == 200 and again.json()["revision"] == 2
    assert _create(cast, "collaborator", text="other view").status_code == 201
    assert Label.objects.filter(unit=units[0]).count() == 2
    history = cast.client("anonymous").get(f"/api/v1/labels/{again.json()['id']}/revisions/").json()
    assert [(r["revision"], r["action"], r["after"]["text"]) for r in history] == [
        (1, "create", "first"), (2, "update", "second")]
    assert history[1]["before"]["text"] == "first"
    unit = Unit.objects.get(pk=units[0].pk)
    assert unit.label_count == 2 and "second" in unit.search_text and "other" in unit.search_text


def test_concurrent_edits_conflict_instead_of_being_lost(cast: Cast, units: list[Unit]) -> None:
    label_id = _create(cast, "owner").json()["id"]
    me, moderator = cast.client("owner"), cast.client("curator")
    # Both read revision 1; the moderator saves first, so the owner's edit must not overwrite it.
    assert moderator.patch(f"/api/v1/labels/{label_id}/", {"text": "moderated", "revision": 1},
                           format="json").status_code == 200
    late = me.patch(f"/api/v1/labels/{label_id}/", {"text": "mine", "revision": 1}, format="json")
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"
    assert Label.objects.get(pk=label_id).text == "moderated"
    stale_create = me.post("/api/v1/labels/", {"unit": UID.format(0), "text": "x", "revision": 0}, format="json")
    assert stale_create.status_code == 409


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_labels_are_stored_as_given_and_rendered_inert(cast: Cast, units: list[Unit], text: str,
                                                               client: Client) -> None:
    response = _create(cast, "owner", text=text)
    assert response.status_code == 201
    assert Label.objects.get().text == text
    assert cast.client("anonymous").get(f"/api/v1/labels/{response.json()['id']}/").json()["text"] == text
    page = client.get("/u/toyish/blocks.1.mlp.hook_post/0/").content.decode()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>bold</b>" not in page


@pytest.mark.parametrize(("payload", "field"), [
    ({"text": ""}, "text"), ({"text": "x" * 2001}, "text"), ({"text": "a\x00b"}, "text"),
    ({"text": "ok", "confidence": 2}, "confidence"), ({"text": "ok", "tags": ["t" * 51]}, "tags"),
    ({"text": "ok", "unit": "no/such/1"}, "unit"), ({"text": "ok", "unit": "not-an-id"}, "unit"),
])
def test_bad_labels_are_refused_with_the_field_named(cast: Cast, units: list[Unit], payload: dict[str, object],
                                                     field: str) -> None:
    body = {"unit": UID.format(0), **payload}
    response = cast.client("owner").post("/api/v1/labels/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert Label.objects.count() == 0 and LabelRevision.objects.count() == 0


def test_labels_list_filters(cast: Cast, units: list[Unit]) -> None:
    _create(cast, "owner", 0)
    _create(cast, "collaborator", 1)
    api = cast.client("anonymous")
    assert [r["unit"] for r in api.get("/api/v1/labels/?author=collaborator").json()["results"]] == [UID.format(1)]
    assert len(api.get(f"/api/v1/labels/?unit={UID.format(0)}").json()["results"]) == 1
    assert api.get("/api/v1/labels/?updated_since=yesterday").status_code == 400
    assert len(api.get("/api/v1/labels/?updated_since=2000-01-01T00:00:00Z").json()["results"]) == 2


def test_bulk_import_all_or_nothing_with_a_report(cast: Cast, units: list[Unit]) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    api = cast.client("owner")
    bad = "unit,text,tags\n" + UID.format(0) + ",ok,a\nno/such/3,missing unit,\n" + UID.format(2) + ",,\n"
    response = api.post("/api/v1/labels/import/", {"file": SimpleUploadedFile("l.csv", bad.encode())})
    assert response.status_code == 400
    assert [e["line"] for e in response.json()["errors"]] == [2, 3] and Label.objects.count() == 0
    good = "\n".join(f'{{"unit": "{UID.format(i)}", "text": "label {i}", "tags": ["x"]}}' for i in range(3))
    dry = api.post("/api/v1/labels/import/?dry_run=true", {"file": SimpleUploadedFile("l.jsonl", good.encode())})
    assert dry.json()["dry_run"] and Label.objects.count() == 0
    done = api.post("/api/v1/labels/import/", {"file": SimpleUploadedFile("l.jsonl", good.encode())})
    assert done.json() | {"errors": []} == {"rows": 3, "created": 3, "updated": 0, "errors": [], "dry_run": False,
                                             "applied": True}
    assert cast.client("outsider").post("/api/v1/labels/import/", {
        "file": SimpleUploadedFile("l.jsonl", good.encode())}).status_code == 403


def test_queue_walks_unlabeled_units(cast: Cast, units: list[Unit]) -> None:
    label_save(unit=units[0], user=cast.owner, text="done")
    api = cast.client("owner")
    assert api.get("/api/v1/labels/queue/").json()["unit"] == UID.format(1)
    assert api.get(f"/api/v1/labels/queue/?after={UID.format(1)}").json()["unit"] == UID.format(2)
    assert api.get("/api/v1/labels/queue/?layer=x").status_code == 400


def test_label_form_on_the_unit_page(cast: Cast, units: list[Unit], client: Client) -> None:
    url = "/u/toyish/blocks.1.mlp.hook_post/3/"
    assert client.post(url + "label/", {"text": "anonymous"}).status_code == 302  # to sign-in
    assert Label.objects.count() == 0
    client.force_login(cast.owner)
    response = client.post(url + "label/", {"text": "commas in lists", "tags": "punct, lists", "revision": "0"})
    assert response.status_code == 302 and response["Location"] == url
    label = Label.objects.get()
    assert (label.text, label.tags, label.revision) == ("commas in lists", ["punct", "lists"], 1)
    page = client.get(url).content.decode()
    assert "commas in lists" in page and "Your label (revision 1)" in page
    # A stale form (revision 0 after the label exists) is refused with a message, not applied.
    client.post(url + "label/", {"text": "stale", "revision": "0"})
    assert Label.objects.get().text == "commas in lists"
    queue = client.get("/queue/?layer=1")
    assert queue.status_code == 302 and "/u/toyish/blocks.1.mlp.hook_post/0/" in queue["Location"]


def test_import_labels_command(cast: Cast, units: list[Unit], tmp_path: Path) -> None:
    good = tmp_path / "labels.csv"
    good.write_text(f"unit,text,confidence\n{UID.format(0)},one,0.5\n{UID.format(1)},two,\n")
    out = io.StringIO()
    call_command("import_labels", str(good), user="owner", stdout=out)
    assert "imported 2 label(s): 2 new" in out.getvalue() and Label.objects.count() == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"unit": "toyish/blocks.1.mlp.hook_post/2", "text": "x"}\n{"unit": "nope", "text": "y"}\n')
    with pytest.raises(CommandError, match="1 bad row"):
        call_command("import_labels", str(bad), user="owner", stderr=io.StringIO())
    with pytest.raises(CommandError, match="annotator"):
        call_command("import_labels", str(good), user="outsider")
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\xff\xfe")
    with pytest.raises(CommandError, match="not UTF-8"):
        call_command("import_labels", str(broken), user="owner")
    assert Label.objects.count() == 2


def test_consensus_shared_words_do_not_depend_on_the_hash_seed() -> None:
    """Ties are ordered by word: every process (and gunicorn worker) shows the same list."""
    from types import SimpleNamespace

    from browser.labels.selectors import label_consensus

    text = "zebra yak xenon walrus vole urchin tapir shrew raven quail"
    labels = [SimpleNamespace(text=text, tags=[]) for _ in range(3)]
    assert label_consensus(labels)["shared_words"] == sorted(text.split())[:8]  # type: ignore[arg-type]
