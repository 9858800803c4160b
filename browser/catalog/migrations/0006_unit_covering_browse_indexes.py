"""The unit list's sort indexes carry the columns its filters read (INCLUDE), so a page's keys come
from an index-only scan and skipped rows are never fetched from the table (docs/design.md, "How
storage grows")."""

from django.db import migrations, models

BROWSE = ("density", "max_activation", "mean_activation", "label_count", "layer", "kind")


def _others(stat: str) -> tuple[str, ...]:
    return tuple(c for c in BROWSE if c != stat)


class Migration(migrations.Migration):

    dependencies = [
        ("catalog", "0005_source_kind_transcoder"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="unit", name="unit_unique_index"),
        migrations.RemoveIndex(model_name="unit", name="unit_source_density"),
        migrations.RemoveIndex(model_name="unit", name="unit_source_max_act"),
        migrations.RemoveIndex(model_name="unit", name="unit_source_mean_act"),
        migrations.AddIndex(
            model_name="unit",
            index=models.Index(fields=["source", "density", "id"], include=_others("density"),
                               name="unit_source_density"),
        ),
        migrations.AddIndex(
            model_name="unit",
            index=models.Index(fields=["source", "max_activation", "id"], include=_others("max_activation"),
                               name="unit_source_max_activation"),
        ),
        migrations.AddIndex(
            model_name="unit",
            index=models.Index(fields=["source", "mean_activation", "id"], include=_others("mean_activation"),
                               name="unit_source_mean_activation"),
        ),
        migrations.AddConstraint(
            model_name="unit",
            constraint=models.UniqueConstraint(fields=("source", "index"), include=("id", *BROWSE),
                                               name="unit_unique_index"),
        ),
    ]
