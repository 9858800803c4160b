"""Intervention scores on a tiny seeded LLaMA where one layer-1 neuron alone drives one output token
(``fixtures/tiny_llama.py``): that neuron ranks first, a dead one scores zero, and a score equals the
same ablation computed here by hand (the down projection's column zeroed in a copy of the model), and
a label naming the token the neuron writes promotes its words while an unrelated label does not."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.core.management import call_command
from django.test import Client

from browser.accounts.services import user_create
from browser.catalog.models import Model, Score, Unit
from browser.corpora.models import Context
from browser.corpora.selectors import decode_tokens
from browser.examples.models import Example
from browser.labels.services import label_save
from browser.runs.models import Run
from fixtures.tiny_llama import build_tiny_llama
from fixtures.tiny_sae import random_sae
from tests.conftest import Cast
from tests.texts import TEXTS
from workers.compute import loading
from workers.pipeline.loader import source_sae
from workers.pipeline.models import model_register
from workers.pipeline.saes import sae_register

pytestmark = pytest.mark.slow
HOOK = "blocks.1.mlp.hook_post"
PLANTED, TOKEN, DEAD = 7, 2332, 3  # token 2332 is "king" in MiniLM's vocabulary
SAE = "blocks.1.mlp.sae-relu-24"


@pytest.fixture
def run(minilm: Model, tmp_path: Path) -> Run:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"{i}.txt").write_text(" ".join([text] * 3))
    call_command("import_corpus", str(folder), name="lines", context_length=16, inline=True, stdout=io.StringIO())
    location = build_tiny_llama(tmp_path / "tiny-llama", planted=(PLANTED, TOKEN), dead=DEAD)
    model = model_register(location=str(location), name="tiny-llama")
    sae_register(model=model, name=SAE, sae=random_sae(48, 24, "relu", seed=3, hook_name=HOOK))
    call_command("harvest", model="tiny-llama", corpus="lines", hooks=HOOK, saes=SAE, k=6, inline=True,
                 stdout=io.StringIO())
    return Run.objects.get(model__name="tiny-llama")


def _scores(name: str) -> dict[int, Score]:
    return {s.unit.index: s for s in Score.objects.filter(name=name, unit__source__name=HOOK).select_related("unit")}


def test_planted_neuron_ranks_first_and_dead_scores_zero(run: Run, client: Client) -> None:
    planted = Unit.objects.get(source__name=HOOK, index=PLANTED)
    ada, bob = (user_create(username=n, password="pw-123456789", role="annotator") for n in ("ada", "bob"))
    label_save(unit=planted, user=ada, text="kings and royalty")
    label_save(unit=planted, user=bob, text="sailing ships on the open sea")
    call_command("score", run=run.pk, intervention=True, contexts=8, inline=True, stdout=io.StringIO())
    kl, drop = _scores("intervention_kl"), _scores("intervention_logit_drop")
    assert len(kl) == len(drop) == 48 and {s.version for s in kl.values()} == {1}
    assert max(kl, key=lambda i: kl[i].value) == PLANTED
    assert kl[PLANTED].value > 10 * sorted(s.value for s in kl.values())[-2]
    assert Unit.objects.get(source__name=HOOK, index=DEAD).dead
    assert kl[DEAD].value == drop[DEAD].value == 0.0 and kl[DEAD].details["contexts"] == 0
    assert drop[PLANTED].details["tokens"][0] == TOKEN and drop[PLANTED].value > 0
    assert kl[PLANTED].details["lowered"][0][0] == TOKEN  # the empirical output agrees with the direct path
    # Sortable like every score, and shown on the unit page with its explanation and the lowered tokens.
    listed = client.get("/api/v1/units/", {"source": f"tiny-llama/{HOOK}", "sort": "-score:intervention_kl"}).json()
    assert listed["results"][0]["index"] == PLANTED
    page = client.get(f"/u/tiny-llama/{HOOK}/{PLANTED}/").content.decode()
    assert "intervention_kl" in page and "zero-ablated" in page and "Its ablation lowers most" in page
    # Labels meet causality: the label naming the token it writes promotes, the other does not.
    matches = {s.label.text: s for s in Score.objects.filter(name="label_output_match").select_related("label")}
    assert matches["kings and royalty"].details["promotes"] and matches["kings and royalty"].details["word"] == "king"
    assert not matches["sailing ships on the open sea"].details["promotes"]
    assert "“kings and royalty”: <strong>promotes label words</strong>" in page
    # Running it again replaces the same rows.
    call_command("score", run=run.pk, intervention=True, contexts=8, inline=True, stdout=io.StringIO())
    assert Score.objects.filter(name="intervention_kl", unit__source__name=HOOK).count() == 48


def test_a_score_equals_the_ablation_by_hand(run: Run) -> None:
    call_command("score", run=run.pk, intervention=True, contexts=256, inline=True, stdout=io.StringIO())
    unit = Unit.objects.get(source__name=HOOK, index=PLANTED)
    pairs = set(Example.objects.filter(unit=unit, kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL]).values_list(
        "context_id", "max_pos"))
    location = Model.objects.get(name="tiny-llama").location
    model = loading.load_torch_model(location, Path("/nonexistent"), True, "cpu", "float32")
    ablated = loading.load_torch_model.__wrapped__(location, Path("/nonexistent"), True, "cpu", "float32")
    with torch.no_grad():
        ablated.model.layers[1].mlp.down_proj.weight[:, PLANTED] = 0
    kls = []
    with torch.inference_mode():
        for ctx, pos in pairs:
            ids = torch.tensor([decode_tokens(bytes(Context.objects.get(pk=ctx).tokens))[: pos + 1]])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            log_q = torch.log_softmax(ablated(input_ids=ids).logits[0, -1].double(), -1)
            kls.append(float((log_p.exp() * (log_p - log_q)).sum()))
    score = Score.objects.get(unit=unit, name="intervention_kl")
    assert score.details["contexts"] == len(pairs)
    assert score.value == pytest.approx(sum(kls) / len(kls), rel=1e-3)


def test_a_feature_score_equals_its_ablation_by_hand(run: Run) -> None:
    """An SAE feature is ablated as x - a_f W_dec[f] at the hook (its error term kept): here by a
    plain pre-hook on the down projection with a_f encoded by hand."""
    call_command("score", run=run.pk, intervention=True, contexts=256, inline=True, stdout=io.StringIO())
    scores = {s.unit.index: s for s in Score.objects.filter(name="intervention_kl", unit__source__name=SAE)
              .select_related("unit")}
    assert len(scores) == 24
    feature = max(scores, key=lambda i: scores[i].value)
    unit = scores[feature].unit
    tensors = source_sae(unit.source).tensors()
    W_enc, b_enc, W_dec, b_dec = (tensors[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec"))

    def ablate(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        a = torch.relu((args[0] - b_dec) @ W_enc[:, feature] + b_enc[feature])  # [B, T]
        return (args[0] - a[..., None] * W_dec[feature],)

    location = Model.objects.get(name="tiny-llama").location
    model = loading.load_torch_model(location, Path("/nonexistent"), True, "cpu", "float32")
    pairs = set(Example.objects.filter(unit=unit, kind__in=[Example.Kind.TOP, Example.Kind.INTERVAL]).values_list(
        "context_id", "max_pos"))
    kls = []
    with torch.inference_mode():
        for ctx, pos in pairs:
            ids = torch.tensor([decode_tokens(bytes(Context.objects.get(pk=ctx).tokens))[: pos + 1]])
            log_p = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(ablate)
            try:
                log_q = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
            finally:
                handle.remove()
            kls.append(float((log_p.exp() * (log_p - log_q)).sum()))
    assert scores[feature].value > 0 and scores[feature].details["contexts"] == len(pairs)
    assert scores[feature].value == pytest.approx(sum(kls) / len(kls), rel=1e-3)


def test_encoder_runs_are_refused(minilm: Model, tmp_path: Path) -> None:
    from django.core.management.base import CommandError

    (tmp_path / "a.txt").write_text(TEXTS[0])
    call_command("import_corpus", str(tmp_path / "a.txt"), name="one", context_length=16, inline=True,
                 stdout=io.StringIO())
    call_command("harvest", model="minilm-l6", corpus="one", hooks="blocks.0.mlp.hook_post", k=2, inline=True,
                 stdout=io.StringIO())
    run = Run.objects.get(model__name="minilm-l6")
    with pytest.raises(CommandError, match="not a causal language model"):
        call_command("score", run=run.pk, intervention=True, inline=True, stdout=io.StringIO())


def test_the_api_queues_the_job_for_curators_only(run: Run, cast: Cast) -> None:
    from browser.runs.models import Job

    url = f"/api/v1/runs/{run.pk}/intervention-scores/"
    assert cast.client("anonymous").post(url, {}, format="json").status_code == 401
    assert cast.client("owner").post(url, {}, format="json").status_code == 403  # an annotator
    assert cast.client("curator").post(url, {"contexts": 0}, format="json").status_code == 400
    response = cast.client("curator").post(url, {"contexts": 4}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.params == {"run_id": run.pk, "contexts": 4} and job.kind == Job.Kind.SCORE
