"""The machines of the cluster, as far as the database remembers them."""

from __future__ import annotations

from django.db import models

from models_app.services.catalog import CatalogQuerySet


class Node(models.Model):
    """A machine whose maintenance worker has run here (its reconcile writes this row). Remembering it is what
    lets the product say "down" once its workers stop heartbeating: a machine the database never saw cannot
    be down, and whether one is up is never stored (the workers' presence keys in Redis say so, within
    seconds). Forgetting a machine for good is `nodes.remove_node` (admin or `manage.py node-remove`)."""

    name = models.CharField(max_length=200, unique=True, help_text="Its NODE_NAME")
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(help_text="Its last reconcile (its workers' heartbeats are in Redis)")

    objects = CatalogQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
