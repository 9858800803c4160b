"""Import Neuronpedia upload batches (features with activations and explanations) as browsable units.

One import reads one or more batch files of one SAE, checks all of them (nothing is written while
any problem remains), then in one transaction creates or reuses:

* a model named after ``model_id`` (architecture ``imported``, location ``neuronpedia:<model_id>``)
  whose tokenizer holds the distinct token strings of every import into it (new strings are
  appended, so earlier ids keep their meaning);
* an SAE source named after the batch's ``layer`` (a Neuronpedia source id such as ``6-res-jb``)
  or ``sae_id``, with a unit for every index up to the largest one imported;
* a corpus of the activation windows (each distinct window once) and one run, status done, that
  holds the examples and statistics of every feature imported into that source;
* labels from the explanations: written by a machine user named after ``explanationModelName``,
  or by the importing user (tagged ``neuronpedia``).

Importing again is safe: the features in the files have their examples and statistics replaced in
that same run (the report counts them as ``replaced``), windows already stored are reused, labels
whose text is unchanged are left alone, and a label someone edited by hand (no ``neuronpedia``
tag) is kept. Features not in the files keep what an earlier import stored, so the batches of one
SAE can come one at a time. See ``neuronpedia_rows`` for how each statistic is derived.
"""

from __future__ import annotations

import array
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.utils import timezone

from browser.accounts import access
from browser.accounts.services import machine_user
from browser.catalog.models import Model, Source, Tokenizer, Unit, name_validator
from browser.catalog.services import (
    model_create,
    model_layers_extend,
    model_tokenizer_set,
    source_get_or_create,
    source_units_extend,
    tokenizer_get_or_create,
    tokenizer_tokens_replace,
    units_ensure,
)
from browser.corpora.models import Context, Corpus
from browser.corpora.services import contexts_write, corpus_counts_set, corpus_create, documents_add
from browser.examples.services import examples_write, stats_write, unit_results_clear, units_set_browse_fields
from browser.imports.neuronpedia_format import BatchFile, NpBatch, NpFeature, Problems, parse_batches
from browser.imports.neuronpedia_rows import (
    FeatureStats,
    example_rows,
    feature_stats,
    logit_effects,
    top_token,
)
from browser.labels.models import Label
from browser.labels.services import label_save
from browser.runs.models import Run
from browser.runs.services import run_config_set, run_create, runs_cover_corpus

IMPORT_TAG = "neuronpedia"
IMPORT_LOCK = 0x6E62_0010  # advisory lock class of imports (the second key hashes the model name)
_LAYER = re.compile(r"^(\d+)(?:-|$)|blocks\.(\d+)\.|layer_?(\d+)")
_HOOK = re.compile(r"^blocks\.\d+\.[A-Za-z0-9_.]+$")
Progress = Callable[[int, int], None]


@dataclass
class ImportReport:
    files: int = 0
    features: int = 0
    replaced: int = 0
    """Features imported before, whose examples and statistics this import replaced."""
    examples: int = 0
    contexts_created: int = 0
    labels_created: int = 0
    labels_updated: int = 0
    labels_unchanged: int = 0
    model: str = ""
    source: str = ""
    run_id: int | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "applied": not self.dry_run and not self.errors}


class ImportRejected(Exception):
    """The files are fine but do not fit what is stored (a name taken by something else)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field_name, message


@dataclass(frozen=True)
class Target:
    model_name: str
    source_name: str
    model_kind: str
    model_id: str
    layer: int
    hook_point: str
    batch: NpBatch


def neuronpedia_import(*, files: Sequence[BatchFile], user: Any, model_name: str | None = None,
                       source_name: str | None = None, model_kind: str = Model.Kind.CAUSAL_LM,
                       dry_run: bool = False, names: Sequence[str] | None = None,
                       progress: Progress | None = None) -> ImportReport:
    """Import Neuronpedia batch files (bytes, paths, open files or parsed objects; paths and files are
    read one at a time) of one SAE; see the module docstring. ``names`` label the files in error
    messages. A dry run does everything and then rolls it back, so its report counts exactly what an
    import would do."""
    if not access.can_curate(user):
        raise PermissionDenied("importing Neuronpedia batches needs the curator role")
    names = list(names) if names is not None else [f"file {i + 1}" for i in range(len(files))]
    report = ImportReport(files=len(files), dry_run=dry_run)
    problems = Problems()
    batches = parse_batches(files, names, problems)
    features = [f for b in batches for f in b.features]
    if not problems.errors and not features:
        problems.add(names[0] if names else "", None, "features", "the files hold no features")
    target = _target(batches[0], model_name, source_name, model_kind, problems) if batches else None
    report.errors = problems.errors
    if report.errors or target is None:
        return report
    report.model, report.source, report.features = target.model_name, target.source_name, len(features)
    try:
        with transaction.atomic():
            _write(target, features, user, report, progress or (lambda done, total: None))
            transaction.set_rollback(dry_run)
    except ImportRejected as exc:
        report.errors = [{"file": "", "feature": None, "field": exc.field, "error": exc.message}]
    return report


# ---- names -------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:100]


def _layer_number(*texts: str) -> int:
    for text in texts:
        match = _LAYER.search(text)
        if match:
            return int(next(g for g in match.groups() if g is not None))
    return 0


def _target(batch: NpBatch, model_name: str | None, source_name: str | None, model_kind: str,
            problems: Problems) -> Target | None:
    layer_is_id = bool(batch.layer) and not batch.layer.isdigit()
    default_source = batch.layer if layer_is_id else batch.sae_id or (f"layer-{batch.layer}" if batch.layer else "")
    model = model_name or _slug(batch.model_id)
    source = source_name or _slug(default_source)
    for field_name, name in (("model", model), ("source", source)):
        if not name or not re.fullmatch(name_validator.regex, name):
            problems.add(batch.name, None, field_name, f"{name!r} is not a usable {field_name} name: "
                         f"{name_validator.message} Give one explicitly.")
    if model_kind not in Model.Kind.values:
        problems.add(batch.name, None, "model_kind", f"must be one of {', '.join(Model.Kind.values)}")
    if problems.errors:
        return None
    hook = next((t for t in (batch.sae_id, batch.layer) if _HOOK.match(t)), "")
    return Target(model, source, model_kind, batch.model_id, _layer_number(batch.layer, batch.sae_id),
                  hook or f"neuronpedia:{batch.layer or batch.sae_id}"[:100], batch)


# ---- the write ---------------------------------------------------------------------------------
def _write(target: Target, features: list[NpFeature], user: Any, report: ImportReport, progress: Progress) -> None:
    with connection.cursor() as cursor:  # two imports into one model take turns
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [IMPORT_LOCK, target.model_name])
    model = _model(target)
    tokenizer, token_id = _vocabulary(model, features)
    source = _source(model, target, max(f.index for f in features) + 1)
    run = _run(model, tokenizer, source, target, user)
    context_of, report.contexts_created = _contexts(run.corpus, features, token_id)
    units = {u.index: u for u in Unit.objects.filter(source=source, index__in=[f.index for f in features])}
    unit_ids = [u.pk for u in units.values()]
    report.replaced = unit_results_clear(run=run, unit_ids=unit_ids)
    stats = {f.index: feature_stats(f, units[f.index].pk) for f in features}
    stats_write(run=run, rows=(s.row for s in stats.values()))
    report.examples = examples_write(run=run, rows=(
        row for f in features for row in example_rows(f, units[f.index].pk, context_of)))
    units_set_browse_fields(run=run, rows=(
        (units[f.index].pk, top_token(f), logit_effects(f, token_id)) for f in features))
    _note_estimates(run, stats)
    for done, feature in enumerate(features, start=1):
        _labels(units[feature.index], feature, user, report)
        progress(done, len(features))
    report.run_id = run.pk


def _model(target: Target) -> Model:
    location = f"neuronpedia:{target.model_id}"
    model = Model.objects.select_related("tokenizer").filter(name=target.model_name).first()
    if model is None:
        return model_create(name=target.model_name, kind=target.model_kind, architecture="imported",
                            location=location, n_layers=target.layer + 1, d_model=0, d_mlp=0, vocab_size=0,
                            tokenizer=None, config={"imported_from": IMPORT_TAG, "model_id": target.model_id})
    if model.architecture != "imported" or model.location != location:
        raise ImportRejected("model", f"a model named {model.name!r} exists and was not imported from {location}; "
                                      "choose another model name")
    if model.n_layers <= target.layer:
        model_layers_extend(model=model, n_layers=target.layer + 1)
    return model


def _vocab_hash(model_name: str, tokens: list[str]) -> str:
    # The model's name is part of the hash: an imported vocabulary belongs to one model and grows
    # with its imports, so it is never shared with another model's.
    return hashlib.sha256(json.dumps([IMPORT_TAG, model_name, tokens]).encode()).hexdigest()


def _vocabulary(model: Model, features: list[NpFeature]) -> tuple[Tokenizer, dict[str, int]]:
    """The model's tokenizer, extended by the strings it lacks, and token string -> id in it."""
    tokens: list[str] = list(model.tokenizer.tokens) if model.tokenizer is not None else []
    token_id: dict[str, int] = {}
    for i, token in enumerate(tokens):
        token_id.setdefault(token, i)
    for feature in features:
        strings = [t for a in feature.activations for t in a.tokens] + [t for t, _ in feature.up + feature.down]
        for token in strings:
            if token not in token_id:
                token_id[token] = len(tokens)
                tokens.append(token)
    vocab_hash = _vocab_hash(model.name, tokens)
    tokenizer = model.tokenizer
    if tokenizer is None:
        tokenizer = tokenizer_get_or_create(name=f"{model.name} (imported from Neuronpedia)",
                                            vocab_hash=vocab_hash, tokens=tokens, special_ids=[])
        model_tokenizer_set(model=model, tokenizer=tokenizer)
    elif tokenizer.vocab_hash != vocab_hash:
        tokenizer_tokens_replace(tokenizer=tokenizer, tokens=tokens, vocab_hash=vocab_hash)
    return tokenizer, token_id


def _source(model: Model, target: Target, n_units: int) -> Source:
    source = Source.objects.filter(model=model, name=target.source_name).first()
    if source is None:
        source = source_get_or_create(model=model, name=target.source_name, hook_point=target.hook_point,
                                      layer=target.layer, kind=Source.Kind.SAE, n_units=n_units)
    else:
        source_units_extend(source=source, n_units=n_units)
    units_ensure(source=source)
    return source


def _run(model: Model, tokenizer: Tokenizer, source: Source, target: Target, user: Any) -> Run:
    """The source's one imported run (and its corpus), created on the first import."""
    config_hash = hashlib.sha256(f"{IMPORT_TAG}:{source.name}".encode()).hexdigest()
    run = Run.objects.select_related("corpus").filter(model=model, config_hash=config_hash).first()
    if run is not None:
        return run
    name = _slug(f"{model.name}.{source.name}.neuronpedia")
    if Corpus.objects.filter(name=name).exists():
        raise ImportRejected("source", f"a corpus named {name!r} exists already; choose another source name")
    corpus = corpus_create(name=name, tokenizer=tokenizer, tokenizer_model=model, context_length=1,
                           origin=f"neuronpedia:{target.model_id}")
    config = {"imported_from": IMPORT_TAG, "version": 1, "model_id": target.model_id,
              "layer": target.batch.layer, "sae_id": target.batch.sae_id,
              "note": "imported from neuronpedia: examples, statistics and labels come from the uploaded "
                      "dashboards (see browser/imports/neuronpedia_rows.py for how each is derived)",
              "density_from_examples": [], "mean_from_examples": []}
    return run_create(model=model, corpus=corpus, config=config, config_hash=config_hash, sources=[source],
                      status=Run.Status.DONE, created_by=user, contexts_total=0, finished=timezone.now())


def _contexts(corpus: Corpus, features: list[NpFeature],
              token_id: Mapping[str, int]) -> tuple[dict[tuple[str, ...], int], int]:
    """Context id of every window (stored once, reused across imports); returns how many were new."""
    windows: dict[tuple[str, ...], int] = {}
    for feature in features:
        for act in feature.activations:
            windows.setdefault(tuple(act.tokens), feature.index)
    stored = {bytes(tokens): pk for pk, tokens in Context.objects.filter(corpus=corpus).values_list("id", "tokens")}
    packed = {w: _pack([token_id[t] for t in w]) for w in windows}
    new = [w for w in windows if packed[w] not in stored]
    if new:
        n_documents = corpus.n_documents
        docs = documents_add(corpus=corpus, rows=[
            {"external_id": f"feature {windows[w]}", "text": "".join(w), "meta": {"imported_from": IMPORT_TAG}}
            for w in new])
        contexts_write(corpus=corpus, first_index=corpus.n_contexts,
                       rows=((doc.pk, [token_id[t] for t in w]) for doc, w in zip(docs, new, strict=True)))
        stored.update((bytes(tokens), pk) for pk, tokens in Context.objects.filter(
            corpus=corpus, index__gte=corpus.n_contexts).values_list("id", "tokens"))
        n_contexts = corpus.n_contexts + len(new)
        corpus_counts_set(corpus=corpus, n_documents=n_documents + len(new), n_contexts=n_contexts,
                          n_tokens=corpus.n_tokens + sum(len(w) for w in new),
                          context_length=max([corpus.context_length] + [len(w) for w in new]))
        runs_cover_corpus(corpus=corpus, n_contexts=n_contexts)
    return {w: stored[packed[w]] for w in windows}, len(new)


def _pack(ids: list[int]) -> bytes:
    return array.array("i", ids).tobytes()


def _note_estimates(run: Run, stats: Mapping[int, FeatureStats]) -> None:
    """Keep the run's lists of units whose density or mean came from their examples only."""
    config = dict(run.config)
    for key, flag in (("density_from_examples", "density_estimated"), ("mean_from_examples", "mean_estimated")):
        kept = {i for i in config.get(key, []) if i not in stats}
        config[key] = sorted(kept | {i for i, s in stats.items() if getattr(s, flag)})
    if config != run.config:
        run_config_set(run=run, config=config)


# ---- labels ------------------------------------------------------------------------------------
def _labels(unit: Unit, feature: NpFeature, user: Any, report: ImportReport) -> None:
    authors: set[int] = set()
    for explanation in feature.explanations:
        machine = bool(explanation.model_name)
        author = machine_user(name=explanation.model_name) if machine else user
        if author.pk in authors:
            report.warnings.append(f"feature {feature.index}: more than one explanation by {author.username}; "
                                   "kept the first")
            continue
        authors.add(author.pk)
        tags = [IMPORT_TAG] + ([f"by:{explanation.author}"[:50]] if explanation.author else [])
        label = Label.objects.filter(unit=unit, author=author).first()
        if label is not None and (label.text, label.tags, label.machine) == (explanation.text, tags, machine):
            report.labels_unchanged += 1
            continue
        if label is not None and IMPORT_TAG not in label.tags:
            report.warnings.append(f"feature {feature.index}: kept the label {author.username} wrote by hand")
            continue
        label_save(unit=unit, user=user, author=author, text=explanation.text, tags=tags, machine=machine)
        report.labels_created += label is None
        report.labels_updated += label is not None
