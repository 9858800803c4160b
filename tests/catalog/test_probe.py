"""Try your own text through a real worker: the page and its twin show the unit's activation on
each token, equal to a forward pass with the same hooks run here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from django.test import Client

from browser.catalog.models import Unit
from browser.catalog.services import source_get_or_create, units_ensure
from fixtures.tiny import build_tiny_bert
from tests.conftest import Cast
from workers.compute import hooks, loading
from workers.pipeline.models import model_register

pytestmark = pytest.mark.slow
HOOK = "blocks.1.mlp.hook_post"
TEXT = "Now is the winter of our discontent"


def _expected(location: str, index: int) -> list[float]:
    arch = hooks.architecture_for("bert")
    model = loading.load_torch_model(location, Path("/nonexistent"), False, "cpu", "float32")
    ids = loading.load_tokenizer(location, Path("/nonexistent"))(TEXT)["input_ids"]
    out: dict[str, torch.Tensor] = {}
    with hooks.capture(model, arch, [HOOK], 2, lambda h, a: out.__setitem__(h, a.clone())):
        hooks.forward(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    return out[HOOK][0, :, index].tolist()


def test_try_your_own_text(worker: subprocess.Popen[bytes], tmp_path: Path, client: Client, cast: Cast) -> None:
    client.force_login(cast.outsider)  # making a worker compute needs a sign-in (any role)
    location = str(build_tiny_bert(tmp_path / "tiny"))
    model = model_register(location=location, name="tiny")
    units_ensure(source=source_get_or_create(model=model, name=HOOK, hook_point=HOOK, layer=1, kind="neurons",
                                             n_units=48))
    unit = Unit.objects.get(source__name=HOOK, index=7)
    want = _expected(location, 7)
    body = client.post(f"/api/v1/units/tiny/{HOOK}/7/probe/", {"text": TEXT}, content_type="application/json")
    assert body.status_code == 200, body.content
    got = body.json()
    assert got["values"] == pytest.approx(want, abs=1e-4) and got["tokens"][0] == "[CLS]"
    assert got["max_pos"] == max(range(len(want)), key=want.__getitem__)
    html = client.post(f"/u/tiny/{HOOK}/7/probe/", {"text": TEXT}).content.decode()
    result = html[html.index("probe-result"):]
    assert len(re.findall(r'<span class="tok[ "]', result.split("</div>")[0])) == len(want)
    assert f'title="{want[got["max_pos"]]:.3f}"' in result and unit.index == 7
