"""Labels of units, one current label per author per unit, with every revision kept."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models.functions import Upper


class Label(models.Model):
    unit = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="labels")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="labels")
    text = models.TextField()
    tags = models.JSONField(default=list, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    machine = models.BooleanField(default=False)
    revision = models.IntegerField(default=1)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "author"], name="label_one_per_author")]
        indexes = [
            models.Index(fields=["updated"], name="label_updated"),
            # The unit list's label filter is UPPER(text) LIKE UPPER('%word%') (icontains): trigrams find
            # rare words without a scan, and the expression's statistics let the planner see common ones.
            GinIndex(OpClass(Upper("text"), name="gin_trgm_ops"), name="label_text_trgm"),
        ]


class LabelRevision(models.Model):
    class Action(models.TextChoices):
        CREATE = "create", "created"
        UPDATE = "update", "edited"
        DELETE = "delete", "deleted"

    label = models.ForeignKey(Label, null=True, on_delete=models.SET_NULL, related_name="revisions")
    unit = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="+")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    editor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    revision = models.IntegerField()
    action = models.CharField(max_length=10, choices=Action.choices)
    before = models.JSONField(null=True)
    after = models.JSONField(null=True)
    at = models.DateTimeField(auto_now_add=True)
