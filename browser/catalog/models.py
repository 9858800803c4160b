"""Models, their sources (a basis at a hook point) and units (one neuron or one feature)."""

from __future__ import annotations

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.core.validators import RegexValidator
from django.db import models

name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
    "Use letters, digits, dots, dashes and underscores (at most 100, starting with a letter or digit).",
)


class Tokenizer(models.Model):
    """A vocabulary, shared by every model and corpus that tokenizes the same way."""

    name = models.CharField(max_length=200)
    vocab_hash = models.CharField(max_length=64, unique=True)
    # Display string of each token id (whitespace kept), so the web side needs no tokenizer.
    tokens = models.JSONField()
    special_ids = models.JSONField(default=list)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({len(self.tokens)} tokens)"


class Model(models.Model):
    class Kind(models.TextChoices):
        CAUSAL_LM = "causal_lm", "causal language model"
        ENCODER = "encoder", "encoder"
        TOY = "toy", "toy model of superposition"
        SYNTHETIC = "synthetic", "synthetic activations with known features"

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    kind = models.CharField(max_length=20, choices=Kind.choices)
    architecture = models.CharField(max_length=40)
    # A packaged alias, a local path or a hub id: what the workers load.
    location = models.CharField(max_length=500)
    n_layers = models.IntegerField()
    d_model = models.IntegerField()
    d_mlp = models.IntegerField()
    vocab_size = models.IntegerField(default=0)
    tokenizer = models.ForeignKey(Tokenizer, null=True, blank=True, on_delete=models.PROTECT)
    config = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Source(models.Model):
    """A basis at one hook point: the neurons themselves, the latents of one SAE, or the latents of one
    transcoder (it reads the hook point, an ``mlp.hook_in``, and predicts that MLP's output)."""

    class Kind(models.TextChoices):
        NEURONS = "neurons", "neurons"
        SAE = "sae", "SAE features"
        TRANSCODER = "transcoder", "transcoder features"

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="sources")
    name = models.CharField(max_length=100, validators=[name_validator])
    hook_point = models.CharField(max_length=100)
    layer = models.IntegerField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    n_units = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="source_unique_name")]
        ordering = ["model_id", "layer", "kind", "name"]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.name}"


class Sae(models.Model):
    class Architecture(models.TextChoices):
        TOPK = "topk", "TopK"
        RELU = "relu", "ReLU (L1)"
        JUMPRELU = "jumprelu", "JumpReLU"

    source = models.OneToOneField(Source, on_delete=models.CASCADE, related_name="sae")
    architecture = models.CharField(max_length=10, choices=Architecture.choices)
    d_in = models.IntegerField()
    d_sae = models.IntegerField()
    cfg = models.JSONField(default=dict)
    weights = models.ForeignKey("core.Blob", on_delete=models.PROTECT)
    quality = models.JSONField(default=dict, blank=True)
    loss_curve = models.JSONField(default=list, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"SAE {self.source}"


# The unit list's filters on a unit's own columns, carried in its sort indexes (see Unit.Meta).
BROWSE_COLUMNS = ["density", "max_activation", "mean_activation", "label_count", "layer", "kind"]


def _browse_columns(key: str) -> list[str]:
    return [c for c in BROWSE_COLUMNS if c != key]


class Unit(models.Model):
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="units")
    index = models.IntegerField()
    # Copies of the source's fields and of the latest finished run's statistics, so that the
    # unit list filters and sorts on one table.
    layer = models.IntegerField()
    kind = models.CharField(max_length=10, choices=Source.Kind.choices)
    density = models.FloatField(null=True, blank=True)
    max_activation = models.FloatField(null=True, blank=True)
    mean_activation = models.FloatField(null=True, blank=True)
    top_token = models.CharField(max_length=100, blank=True)
    dead = models.BooleanField(default=False)
    stats_run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Tokens pushed up and down through the unembedding: {"up": [[id, value], ...], "down": [...]}.
    logit_effects = models.JSONField(default=dict, blank=True)
    label_count = models.IntegerField(default=0)
    search_text = models.TextField(blank=True)
    search = SearchVectorField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "index"], include=["id", *BROWSE_COLUMNS],
                                               name="unit_unique_index")]
        indexes = [
            models.Index(fields=["density"], name="unit_density"),
            models.Index(fields=["max_activation"], name="unit_max_act"),
            models.Index(fields=["layer", "kind", "index"], name="unit_layer_kind"),
            models.Index(fields=["top_token"], name="unit_top_token"),
            GinIndex(fields=["search"], name="unit_search"),
            # Keyset pages of one source sorted by a statistic (the unit list's sorts), covering the
            # list's filters: rows a filter skips are read from the index only, never the table.
            *(models.Index(fields=["source", stat, "id"], include=_browse_columns(stat), name=f"unit_source_{stat}")
              for stat in ("density", "max_activation", "mean_activation")),
        ]

    def __str__(self) -> str:
        return f"{self.source_id}/{self.index}"


class Score(models.Model):
    """One typed score of a unit (or of one of its labels): name, version, value."""

    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="scores")
    name = models.CharField(max_length=60)
    version = models.IntegerField(default=1)
    value = models.FloatField()
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.CASCADE)
    label = models.ForeignKey("labels.Label", null=True, blank=True, on_delete=models.CASCADE)
    details = models.JSONField(default=dict, blank=True)
    computed = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["unit", "name", "version", "label"], name="score_unique", nulls_distinct=False
            )
        ]
        indexes = [
            models.Index(fields=["name", "value"], name="score_name_value"),
            models.Index(fields=["name", "version"], name="score_name_version"),  # the latest version
        ]


class UnitRelation(models.Model):
    """A ranked link between two units: nearest features, aligned neurons, correlated units."""

    class Kind(models.TextChoices):
        DECODER_COSINE = "decoder_cosine", "nearest by decoder cosine"
        ALIGNMENT = "alignment", "decoder alignment"
        CORRELATION = "correlation", "activation correlation"
        CONTEXT_OVERLAP = "context_overlap", "shared top contexts"

    unit = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="relations")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    rank = models.SmallIntegerField()
    other = models.ForeignKey(Unit, on_delete=models.CASCADE, related_name="+")
    value = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "kind", "rank"], name="relation_unique")]
