"""Machines: staff see every one the database remembers and remove one that is down for good (the delete
confirmation is the confirmation; deleting goes through nodes.remove_node, which forgets its snapshots' rows
and never touches its files)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from models_app.models import Node, Snapshot
from models_app.services import nodes


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "state", "snapshots", "first_seen", "last_seen"]
    readonly_fields = ["name", "first_seen", "last_seen"]
    search_fields = ["name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        self._down = nodes.down_nodes()  # one Redis read per page, not one per row
        count = (
            Snapshot.objects.filter(node=OuterRef("name"))
            .order_by()
            .values("node")
            .annotate(n=Count("id"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(snapshot_count=Coalesce(Subquery(count, output_field=IntegerField()), 0))
        )

    @admin.display(description="State")
    def state(self, obj: Node) -> str:
        return "down" if obj.name in getattr(self, "_down", set()) else "up"

    @admin.display(description="Snapshots", ordering="snapshot_count")
    def snapshots(self, obj: Node) -> int:
        return obj.snapshot_count  # type: ignore[attr-defined]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a machine's own reconcile adds it

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or obj.name in nodes.down_nodes()  # a machine that is up cannot be removed

    def delete_model(self, request: HttpRequest, obj: Node) -> None:
        self._remove(request, [obj.name])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._remove(request, list(queryset.values_list("name", flat=True)))

    def _remove(self, request: HttpRequest, names: list[str]) -> None:
        for name in names:
            try:
                removal = nodes.remove_node(name)
            except nodes.NodeError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.message_user(
                request,
                f"Removed node {removal.node}: forgot {removal.snapshots} snapshot row(s) (its files are "
                f"untouched), cancelled {removal.jobs_cancelled} pull(s).",
                messages.SUCCESS,
            )
