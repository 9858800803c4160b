"""Writes of attribution graphs: a request (validated, deduplicated by config hash, with its job),
the worker's claim, its result and its failure."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from browser.catalog.models import Model, Source
from browser.catalog.uids import storable
from browser.graphs.models import Graph
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.compute.graph_config import MAX_PROMPT_CHARS, SUPPORTED_MODEL_TYPES, GraphConfig

JOB_KIND = Job.Kind.GRAPH


def _model(name: str) -> Model:
    model = Model.objects.select_related("tokenizer").filter(name=name).first()
    if model is None:
        raise ValidationError(f"unknown model {name[:100]!r}")
    model_type = str(model.config.get("model_type", model.architecture))
    if model.kind != Model.Kind.CAUSAL_LM:
        raise ValidationError(f"{model.name} is {model.get_kind_display()!s}, not a causal language model: "
                              "attribution graphs trace a next-token prediction")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValidationError(f"{model.name} is a {model_type} model; attribution graphs are computed for "
                              f"{', '.join(SUPPORTED_MODEL_TYPES)} models")
    return model


def _prompt(prompt: str) -> str:
    if not prompt.strip():
        raise ValidationError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are traced")
    if not storable(prompt):
        raise ValidationError("the prompt holds a NUL or a lone surrogate")
    return prompt


def _saes(model: Model) -> tuple[tuple[int, str], ...]:
    """(layer, source name) of one SAE per layer on ``blocks.{layer}.mlp.hook_post`` (the first by name
    where a layer has several); refused when no layer has one."""
    chosen: dict[int, str] = {}
    sources = (Source.objects.filter(model=model, kind=Source.Kind.SAE, hook_point__endswith=".mlp.hook_post")
               .select_related("sae").order_by("layer", "name"))
    for source in sources:
        mode = source.sae.cfg.get("normalize_activations", "none") if hasattr(source, "sae") else "none"
        if mode not in ("constant_norm_rescale", "layer_norm"):
            chosen.setdefault(source.layer, source.name)
    if not chosen:
        raise ValidationError(f"{model.name} has no SAE on any layer's mlp.hook_post (one without per-token input "
                              "normalisation): basis sae has no units; train or import one "
                              "(train_sae --hook blocks.L.mlp.hook_post)")
    return tuple(sorted(chosen.items()))


def target_token(model: Model, target: str) -> int:
    """A target given as a token id or as the token's exact display string -> its id."""
    vocabulary: list[str] = model.tokenizer.tokens if model.tokenizer is not None else []
    if target.isdigit() and int(target) < max(len(vocabulary), model.vocab_size):
        return int(target)
    if target in vocabulary:
        return vocabulary.index(target)
    raise ValidationError(f"target {target[:100]!r} is not a token of {model.name}'s vocabulary "
                          "(give a token id or a token's exact string, with its leading space)")


def graph_request(*, model_name: str, prompt: str, basis: str = "neurons", target: str | None = None,
                  max_units: int | None = None, created_by: Any = None) -> tuple[Graph, bool]:
    """(graph, created): a new graph and its job, or the graph already made with the same settings
    (a failed one is made again). Bad input raises ValidationError and stores nothing."""
    model = _model(model_name)
    prompt = _prompt(prompt)
    options: dict[str, Any] = {"basis": basis}
    if basis == "sae":
        options["saes"] = _saes(model)
    if target:
        options["target_tokens"] = (target_token(model, target),)
    if max_units is not None:
        options["max_units"] = max_units
    try:
        config = GraphConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        raise ValidationError(str(exc)) from None
    digest = config.hash(model=model.name, prompt=prompt)
    with transaction.atomic():
        existing = Graph.objects.select_for_update().filter(config_hash=digest).first()
        if existing is not None and existing.status != Graph.Status.FAILED:
            return existing, False
        if existing is not None:
            existing.delete()
        graph = Graph.objects.create(model=model, prompt=prompt, basis=basis, config=config.to_dict(),
                                     config_hash=digest, created_by=created_by)
        graph.job = job_create(kind=JOB_KIND, title=f"attribution graph #{graph.pk} on {model.name}",
                               params={"graph_id": graph.pk}, created_by=created_by)
        graph.save(update_fields=["job"])
    return graph, True


def graph_claim(*, graph_id: int) -> bool:
    """Mark the graph running; False when it is done already (a task delivered twice)."""
    return bool(Graph.objects.filter(pk=graph_id).exclude(status=Graph.Status.DONE)
                .update(status=Graph.Status.RUNNING, error=""))


def graph_finish(*, graph_id: int, tokens: list[Any], logits: list[Any], nodes: list[Any], edges: list[Any],
                 scores: dict[str, Any]) -> None:
    Graph.objects.filter(pk=graph_id).update(status=Graph.Status.DONE, tokens=tokens, logits=logits, nodes=nodes,
                                             edges=edges, scores=scores, finished=timezone.now())


def graph_fail(*, graph_id: int, error: str) -> None:
    Graph.objects.filter(pk=graph_id).update(status=Graph.Status.FAILED, error=error[:2000], finished=timezone.now())
