"""Machine authors (explainers, Neuronpedia explanation models) live in their own namespace: a batch
whose explainer is named like a real person never writes under that person, and no sign-up can take
a machine's name."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from browser.accounts.services import machine_user, user_create
from browser.imports.neuronpedia import neuronpedia_import
from browser.labels.models import Label
from tests.conftest import Cast

BATCH = {"model_id": "gpt2-small", "layer": "6-res-jb", "sae_id": "6-res-jb",
         "features": [{"featureIndex": 0, "explanations": [
             {"description": "cats", "explanationModelName": "collaborator"}]}]}


def test_an_explainer_named_like_a_person_does_not_write_as_that_person(cast: Cast) -> None:
    report = neuronpedia_import(files=[json.dumps(BATCH).encode()], user=cast.curator, names=["batch-0.json"])
    assert report.errors == [], report.errors
    (label,) = Label.objects.all()
    assert label.machine and label.author != cast.collaborator
    assert label.author.username == "machine:collaborator" and label.author.account.machine
    assert not Label.objects.filter(author=cast.collaborator).exists()
    assert not cast.collaborator.account.machine


def test_machine_names_cannot_be_signed_up_for_and_machines_cannot_sign_in(db: None) -> None:
    machine = machine_user(name="explainer-offline")
    assert machine.username == "machine:explainer-offline" and not machine.has_usable_password()
    with pytest.raises(ValidationError):
        user_create(username="machine:explainer-offline", password="a-long-password-1")
    with pytest.raises(ValidationError):
        user_create(username="machine:someone-else", password="a-long-password-1")
    person = user_create(username="explainer-offline", password="a-long-password-1", role="annotator")
    assert machine_user(name="explainer-offline") == machine != person  # the same machine, found again
    assert get_user_model().objects.filter(username__startswith="machine:").count() == 1
