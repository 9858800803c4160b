"""Server CPU of the pages `bench load` hits (issue 14 item 15): what does not change is not read
or rendered again, what changes shows at once, and the pages stay what they were.

- a label write's answer reads nothing after the write (the unit, source, model and author were
  read before it), and a token's user comes with its role in one query;
- the unit's JSON twin serializes its run parts (statistics, examples) once per stats run;
- the label panel renders each label and revision once per content: after one edit, only the
  edited label and the new revision are rendered;
- a unit list (source page, search) renders each row once per content: a new label re-renders the
  rows whose labels it changed, and no other.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from browser.accounts.services import token_create, user_create
from browser.catalog.models import Unit
from browser.examples.models import Example
from browser.labels.services import label_save
from browser.runs.models import Run
from tests.catalog.builders import BrowserData

pytestmark = pytest.mark.slow


def _api(user: object) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user, owner=user, name='t')[1]}")


def _rendered(response: object, name: str) -> int:
    return sum(t.name == name for t in response.templates)  # type: ignore[attr-defined]


def test_label_write_answer_reads_nothing_after_the_write(data: BrowserData) -> None:
    user = user_create(username=f"w-{uuid.uuid4().hex[:8]}", password=None, role="annotator")
    api = _api(user)
    uid = f"tiny/{data.neurons.name}/{data.labeled.index}"
    created = api.post("/api/v1/labels/", {"unit": uid, "text": "first", "revision": 0}, content_type="application/json")
    assert created.status_code == 201
    with CaptureQueriesContext(connection) as queries:
        edited = api.patch(f"/api/v1/labels/{created.json()['id']}/", {"text": "second", "revision": 1},
                           content_type="application/json")
    assert edited.status_code == 200
    body = edited.json()
    assert (body["unit"], body["author"], body["text"], body["revision"]) == (uid, user.username, "second", 2)
    assert body["hook_point"] == data.neurons.hook_point
    sql = [q["sql"] for q in queries.captured_queries]
    after = sql[next(i for i, s in enumerate(sql) if s.startswith("RELEASE SAVEPOINT") or s == "COMMIT"):]
    assert not [s for s in after if s.startswith("SELECT")], after
    assert not [s for s in sql if "accounts_account" in s and "accounts_apitoken" not in s]  # the role came with the token
    stale = api.patch(f"/api/v1/labels/{created.json()['id']}/", {"text": "third", "revision": 1},
                      content_type="application/json")
    assert stale.status_code == 409  # the conflict rule is unchanged


def test_unit_json_serializes_its_run_parts_once_per_stats_run(data: BrowserData, client: Client) -> None:
    unit = data.labeled
    url = f"/api/v1/units/tiny/{data.neurons.name}/{unit.index}/"
    first = client.get(url).content
    with CaptureQueriesContext(connection) as queries:
        second = client.get(url).content
    assert second == first
    assert not [q["sql"] for q in queries.captured_queries if "examples_" in q["sql"]]
    top = Example.objects.filter(unit=unit, kind=0, rank=0).get()
    assert client.get(url).json()["top"][0]["max_value"] == pytest.approx(top.max_value)
    # labels are read fresh
    label_save(unit=unit, user=data.annotator, text=f"fresh {uuid.uuid4().hex}")
    assert "fresh" in client.get(url).json()["labels"][0]["text"]
    # another database with the same ids (another creation time) never gets the first one's parts
    Example.objects.filter(pk=top.pk).update(max_value=123.456)
    Run.objects.filter(pk=data.run.pk).update(created=data.run.created + timedelta(seconds=1))
    assert client.get(url).json()["top"][0]["max_value"] == pytest.approx(123.456)


def test_label_panel_renders_each_label_and_revision_once_per_content(data: BrowserData, client: Client) -> None:
    unit = Unit.objects.get(source=data.neurons, index=data.labeled.index + 1)
    authors = [user_create(username=f"p{i}-{uuid.uuid4().hex[:8]}", password=None, role="annotator") for i in range(3)]
    for author in authors:
        label_save(unit=unit, user=author, text=f"{author.username} <b>reads</b> commas")
    url = f"/u/tiny/{data.neurons.name}/{unit.index}/"
    first = client.get(url)
    assert _rendered(first, "labels/_label.html") <= 3 and _rendered(first, "labels/_revision.html") <= 3
    second = client.get(url)
    assert second.content == first.content
    assert _rendered(second, "labels/_label.html") == 0 and _rendered(second, "labels/_revision.html") == 0
    assert "&lt;b&gt;reads&lt;/b&gt;" in second.content.decode()  # escaped as before

    label_save(unit=unit, user=authors[1], text="an edit of one label", revision=1)
    third = client.get(url)
    assert _rendered(third, "labels/_label.html") == 1 and _rendered(third, "labels/_revision.html") == 1
    html = third.content.decode()
    assert "an edit of one label" in html and "revision 2" in html
    assert html.count('class="label"') == 3 and "3 authors" in html

    authors[0].username = f"renamed-{uuid.uuid4().hex[:8]}"  # a name shown in a label and a revision
    authors[0].save()
    renamed = client.get(url)
    assert _rendered(renamed, "labels/_label.html") == 1 and authors[0].username in renamed.content.decode()


def test_unit_list_renders_each_row_once_per_content(data: BrowserData, client: Client) -> None:
    url = f"/s/tiny/{data.neurons.name}/?sort=index"
    first = client.get(url)
    second = client.get(url)
    assert second.content == first.content and _rendered(second, "catalog/_unit_row.html") == 0
    unit = Unit.objects.get(source=data.neurons, index=3)
    text = f"row label {uuid.uuid4().hex}"
    label_save(unit=unit, user=data.annotator, text=text)
    third = client.get(url)
    assert _rendered(third, "catalog/_unit_row.html") == 1 and text in third.content.decode()
    # the same unit across sources (search) shows its source: another row
    search = client.get(f"/units/?label={text}")
    assert f"tiny/{data.neurons.name}/3</a>" in search.content.decode()
