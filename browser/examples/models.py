"""What a harvest run records per unit: statistics and example contexts."""

from __future__ import annotations

from django.db import models


class UnitStats(models.Model):
    unit = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="stats", db_index=False)
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="unit_stats")
    n_tokens = models.BigIntegerField()
    fire_count = models.BigIntegerField()
    density = models.FloatField()
    mean = models.FloatField()
    max = models.FloatField()
    # Counts per bin of the run's fixed bin grid (little-endian int64), over every
    # `hist_stride`-th token; bin 0 holds values <= 0.
    hist = models.BinaryField()
    hist_stride = models.IntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["unit", "run"], name="unitstats_unique")]


class Example(models.Model):
    class Kind(models.IntegerChoices):
        TOP = 0, "top"
        INTERVAL = 1, "interval"
        RANDOM = 2, "random"

    # No separate FK indexes (the unique constraint's index serves lookups by unit) and no FK
    # constraints: Django's deferred FK checks on hundreds of thousands of COPYed rows cost more
    # than the COPY itself. finalize writes only ids it has just read; the ORM still cascades.
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="+", db_index=False,
                            db_constraint=False)
    unit = models.ForeignKey("catalog.Unit", on_delete=models.CASCADE, related_name="examples", db_index=False,
                             db_constraint=False)
    kind = models.SmallIntegerField(choices=Kind.choices)
    # The interval group of an interval example (0 for other kinds).
    bucket = models.SmallIntegerField(default=0)
    rank = models.SmallIntegerField()
    context = models.ForeignKey("corpora.Context", on_delete=models.CASCADE, related_name="+", db_index=False,
                                db_constraint=False)
    max_value = models.FloatField()
    max_pos = models.SmallIntegerField()
    # Per-token values of the whole context as little-endian float16: two bytes a token.
    values = models.BinaryField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["unit", "run", "kind", "bucket", "rank"], name="example_unique")
        ]
        indexes = [models.Index(fields=["run"], name="example_run")]
