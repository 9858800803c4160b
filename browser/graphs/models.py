"""Attribution graphs: one row per (model, prompt, config), its pruned nodes and edges stored
compactly as JSON arrays on the row (a graph is read whole, never queried node by node)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Graph(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    model = models.ForeignKey("catalog.Model", on_delete=models.CASCADE, related_name="graphs")
    prompt = models.TextField()
    basis = models.CharField(max_length=20)
    # GraphConfig.to_dict() as requested; config_hash covers it, the model's name and the prompt.
    config = models.JSONField()
    config_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    job = models.ForeignKey("runs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)
    # [[token id, display string], ...] of the prompt.
    tokens = models.JSONField(default=list, blank=True)
    # [[token id, display string, probability, logit], ...] of the target logits.
    logits = models.JSONField(default=list, blank=True)
    # Kept nodes: [[kind, layer, position, index, value, influence], ...]; kind is unit, error
    # (for neurons: the unselected neurons of one layer and position), token or logit; index is
    # the neuron (unit), the logit's row (logit) or -1.
    nodes = models.JSONField(default=list, blank=True)
    # Kept edges: [[source node, target node, weight], ...] (positions in ``nodes``).
    edges = models.JSONField(default=list, blank=True)
    # replacement_score, completeness, kept_share, selected_share, full_nodes, timings (seconds).
    scores = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["config_hash"], name="graph_unique_config")]
        indexes = [models.Index(fields=["model", "created"], name="graph_model_created")]

    def __str__(self) -> str:
        return f"graph #{self.pk} of {self.prompt[:40]!r}"


class Supernode(models.Model):
    """A named group of a graph's nodes (positions in ``Graph.nodes``), saved by a user; every save
    and delete is kept as a SupernodeRevision, like labels."""

    graph = models.ForeignKey(Graph, on_delete=models.CASCADE, related_name="supernodes")
    name = models.CharField(max_length=200)
    nodes = models.JSONField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    revision = models.IntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["graph", "name"], name="supernode_unique_name")]


class SupernodeRevision(models.Model):
    graph = models.ForeignKey(Graph, on_delete=models.CASCADE, related_name="supernode_revisions")
    supernode = models.ForeignKey(Supernode, null=True, on_delete=models.SET_NULL, related_name="revisions")
    name = models.CharField(max_length=200)
    nodes = models.JSONField()
    revision = models.IntegerField()
    deleted = models.BooleanField(default=False)
    editor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
