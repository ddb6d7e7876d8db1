from django.db import migrations, models


class Migration(migrations.Migration):
    """Existing rows get null: their markers are computed lazily by the worker of the node that holds the files
    (reconcile, verify, a model load), never here: a migration runs on one machine and cannot read the others'."""

    dependencies = [
        ("models_app", "0009_userlimits"),
    ]

    operations = [
        migrations.AddField(
            model_name="snapshot",
            name="markers",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
