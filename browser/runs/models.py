"""Long work: jobs (any long task), harvest runs and the shards workers claim."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Job(models.Model):
    class Kind(models.TextChoices):
        TOKENIZE = "tokenize", "tokenize a corpus"
        HARVEST = "harvest", "harvest"
        TRAIN_SAE = "train_sae", "train an SAE"
        SCORE = "score", "score units"
        EXPORT = "export", "export"
        GRAPH = "graph", "attribution graph"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    title = models.CharField(max_length=300)
    params = models.JSONField(default=dict, blank=True)
    done = models.BigIntegerField(default=0)
    total = models.BigIntegerField(default=0)
    message = models.CharField(max_length=500, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    attempts = models.IntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created"], name="job_status_created")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk}: {self.title}"


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        HARVESTING = "harvesting", "harvesting"
        FINALIZING = "finalizing", "finalizing"
        DONE = "done", "done"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    model = models.ForeignKey("catalog.Model", on_delete=models.CASCADE, related_name="runs")
    corpus = models.ForeignKey("corpora.Corpus", on_delete=models.CASCADE, related_name="runs")
    sources = models.ManyToManyField("catalog.Source", related_name="runs")
    # The frozen HarvestConfig (with its version) and its hash: the same run is never computed twice.
    config = models.JSONField()
    config_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    contexts_total = models.IntegerField(default=0)
    contexts_done = models.IntegerField(default=0)
    n_shards = models.IntegerField(default=1)
    error = models.TextField(blank=True)
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="run")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "corpus", "config_hash"], name="run_unique_config")
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.model_id} x {self.corpus_id}"


class Shard(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        CLAIMED = "claimed", "claimed"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="shards")
    index = models.IntegerField()
    # Context indices [start, end) of the run's corpus.
    start = models.IntegerField()
    end = models.IntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    claimed_by = models.CharField(max_length=200, blank=True)
    claim_token = models.CharField(max_length=64, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    contexts_done = models.IntegerField(default=0)
    partial = models.ForeignKey("core.Blob", null=True, blank=True, on_delete=models.SET_NULL)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="shard_unique_index")]
