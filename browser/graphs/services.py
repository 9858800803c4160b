"""Writes of attribution graphs: a request (validated, deduplicated by config hash, with its job),
the worker's claim, its result and its failure; and of supernodes: save (create, or update at the
revision the writer read) and delete, each recorded as a revision."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from browser.accounts import access
from browser.catalog.models import Model, Source
from browser.catalog.uids import storable
from browser.graphs.models import Graph, Supernode, SupernodeRevision
from browser.graphs.neuronpedia import GraphFileError, graph_file_data, parse_neuronpedia
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


def _transcoders(model: Model) -> tuple[tuple[int, str], ...]:
    """(layer, source name) of one transcoder per layer on ``blocks.{layer}.mlp.hook_in`` (the first by
    name where a layer has several); refused when no layer has one."""
    chosen: dict[int, str] = {}
    for source in Source.objects.filter(model=model, kind=Source.Kind.TRANSCODER,
                                        hook_point__endswith=".mlp.hook_in").order_by("layer", "name"):
        chosen.setdefault(source.layer, source.name)
    if not chosen:
        raise ValidationError(f"{model.name} has no transcoder on any layer's mlp.hook_in: basis transcoder has no "
                              "units; train or import one (train_sae --transcoder --hook blocks.L.mlp.hook_in, "
                              "or import_sae a circuit-tracer layer_L.safetensors)")
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
    elif basis == "transcoder":
        options["saes"] = _transcoders(model)
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


class SupernodeConflict(ValidationError):
    """The supernode changed since the writer read it (another revision was saved)."""


def _supernode_clean(graph: Graph, name: Any, nodes: Any) -> tuple[str, list[int]]:
    if graph.status != Graph.Status.DONE:
        raise ValidationError(f"graph #{graph.pk} is {graph.status}: group nodes once it is done")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or not storable(name):
        raise ValidationError("a supernode needs a name of 1 to 200 characters")
    if not isinstance(nodes, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in nodes):
        raise ValidationError("nodes must be a list of node numbers")
    unique = sorted(set(nodes))
    if len(unique) < 2:
        raise ValidationError("a supernode groups at least two nodes")
    if unique[0] < 0 or unique[-1] >= len(graph.nodes):
        raise ValidationError(f"node numbers run from 0 to {len(graph.nodes) - 1} in graph #{graph.pk}")
    return name.strip(), unique


def supernode_save(*, graph: Graph, user: Any, name: Any, nodes: Any, revision: int | None = None) -> Supernode:
    """Create the supernode ``name`` of the graph, or replace its nodes (``revision``: the one the
    writer read; a newer one raises SupernodeConflict)."""
    if not access.can_label(user):
        raise PermissionDenied("grouping nodes needs the annotator role")
    name, members = _supernode_clean(graph, name, nodes)
    with transaction.atomic():
        node = Supernode.objects.select_for_update().filter(graph=graph, name=name).first()
        if node is None:
            node = Supernode.objects.create(graph=graph, name=name, nodes=members, author=user)
        else:
            if revision is not None and revision != node.revision:
                raise SupernodeConflict(f"supernode {name!r} is at revision {node.revision}, not {revision}")
            node.nodes, node.revision = members, node.revision + 1
            node.save(update_fields=["nodes", "revision", "updated"])
        SupernodeRevision.objects.create(graph=graph, supernode=node, name=name, nodes=members,
                                         revision=node.revision, editor=user)
    return node


def supernode_delete(*, supernode: Supernode, user: Any) -> None:
    if not access.can_label(user):
        raise PermissionDenied("grouping nodes needs the annotator role")
    with transaction.atomic():
        SupernodeRevision.objects.create(graph=supernode.graph, supernode=None, name=supernode.name,
                                         nodes=supernode.nodes, revision=supernode.revision + 1, deleted=True,
                                         editor=user)
        supernode.delete()


def _imported_basis(model: Model, extension: dict[str, Any]) -> tuple[str, list[list[Any]]]:
    """(basis, [[layer, source name], ...]) of an imported graph: what its ``neuron_browser`` metadata
    says when this browser has those sources (units then link to their pages), else ``imported``."""
    basis, saes = extension.get("basis"), extension.get("saes") or []
    if basis == "neurons" and not saes:
        return "neurons", []
    if basis in ("sae", "transcoder") and isinstance(saes, list) and saes:
        found = {(s.layer, s.name) for s in Source.objects.filter(model=model, name__in=[str(e[1]) for e in saes
                                                                                          if isinstance(e, list)])}
        wanted = [[int(e[0]), str(e[1])] for e in saes if isinstance(e, list) and len(e) == 2 and str(e[0]).isdigit()]
        if wanted and len(wanted) == len(saes) and all((layer, name) in found for layer, name in wanted):
            return str(basis), wanted
    return "imported", []


def graph_import(*, data: Any, model_name: str | None = None, user: Any = None) -> tuple[Graph, bool, list[str]]:
    """(graph, created, notes): a Neuronpedia/circuit-tracer attribution-graph JSON object stored as a
    finished graph of a registered model (``model_name``, else the one its metadata names). The same
    file again gives the stored graph. Its supernodes come along when ``user`` may group nodes. A
    malformed file or an unknown model raises ValidationError and stores nothing."""
    import hashlib
    import json

    try:
        parsed = parse_neuronpedia(data)
    except GraphFileError as exc:
        raise ValidationError(str(exc)) from None
    name = model_name or str(parsed.extension.get("model") or "") or parsed.scan
    model = Model.objects.filter(name=name).first()
    if model is None:
        raise ValidationError(f"unknown model {name[:100]!r} (the file names {parsed.scan[:100]!r}): register it "
                              "first (manage.py register_model) or name a registered model")
    deepest = max((row[1] for row in parsed.nodes if row[0] in ("unit", "error")), default=-1)
    if deepest >= model.n_layers:
        raise ValidationError(f"the file's nodes reach layer {deepest}, but {model.name} has {model.n_layers} layers")
    texts = [parsed.prompt, *(t[1] for t in parsed.tokens), *(entry[1] for entry in parsed.logits),
             *parsed.labels.values(), *(group[0] for group in parsed.supernodes)]
    if not all(storable(text) for text in texts):
        raise ValidationError("the file's texts hold a NUL or a lone surrogate")
    basis, saes = _imported_basis(model, parsed.extension)
    digest = hashlib.sha256(json.dumps(["import", model.name, data], sort_keys=True).encode()).hexdigest()
    provenance = {"format": "neuronpedia", "slug": parsed.slug, "scan": parsed.scan, "by": getattr(user, "username", ""),
                  "labels": parsed.labels if basis == "imported" else {}}
    scores = parsed.extension.get("scores") if isinstance(parsed.extension.get("scores"), dict) else {}
    scores = {**(scores or {}), "nodes": len(parsed.nodes), "edges": len(parsed.edges)}
    if parsed.node_threshold is not None:
        scores.setdefault("node_threshold", parsed.node_threshold)
    notes = []
    with transaction.atomic():
        existing = Graph.objects.filter(config_hash=digest).first()
        if existing is not None:
            return existing, False, ["this file was imported before: the stored graph"]
        graph = Graph.objects.create(
            model=model, prompt=parsed.prompt, basis=basis, config={"imported": provenance, "basis": basis, "saes": saes},
            config_hash=digest, status=Graph.Status.DONE, created_by=user if getattr(user, "pk", None) else None,
            finished=timezone.now(), tokens=parsed.tokens, logits=parsed.logits, nodes=parsed.nodes,
            edges=parsed.edges, scores=scores)
        if parsed.supernodes and access.can_label(user):
            for group_name, members in parsed.supernodes:
                node = Supernode.objects.create(graph=graph, name=group_name, nodes=members, author=user)
                SupernodeRevision.objects.create(graph=graph, supernode=node, name=group_name, nodes=members,
                                                 revision=1, editor=user)
        elif parsed.supernodes:
            notes.append(f"{len(parsed.supernodes)} supernodes left out: grouping nodes needs the annotator role")
    if basis == "imported":
        notes.append("its features are not this browser's units: nodes show the file's labels and link nowhere")
    return graph, True, notes


def graph_import_upload(upload: Any, *, model_name: str | None, user: Any) -> tuple[Graph, bool, list[str]]:
    """Read an uploaded graph file (refused over ``MAX_IMPORT_BYTES`` or when not JSON) and import it."""
    return graph_import(data=graph_file_data(upload), model_name=model_name, user=user)
