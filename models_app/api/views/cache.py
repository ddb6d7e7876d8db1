"""The cache: per-root statistics, and the cleanup policy as a plan (preview) or a run (staff only)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.views.common import ApiView, errors
from models_app.selectors.cache import cache_totals
from models_app.services.cleanup import clean_cache, configured_policy
from models_app.services.health import disk_usage


class DiskSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    used = serializers.IntegerField()
    free = serializers.IntegerField()


class SharedStoreSerializer(serializers.Serializer):
    entries = serializers.IntegerField(help_text="Files in huggingface_hub's shared Xet store, each once")
    bytes = serializers.IntegerField(help_text="Their size on disk, each counted once")
    orphaned_entries = serializers.IntegerField(
        help_text="Entries no cached repo links to (cleanup removes them)"
    )
    orphaned_bytes = serializers.IntegerField()


class CacheRootSerializer(serializers.Serializer):
    name = serializers.CharField()
    path = serializers.CharField(required=False, help_text="Staff only")
    exists = serializers.BooleanField()
    disk = DiskSerializer()
    snapshots = serializers.IntegerField(help_text="Snapshots you may see in this root (not deleted)")
    size_bytes = serializers.IntegerField(help_text="Their total size")
    by_status = serializers.DictField(child=serializers.IntegerField())
    shared_store = SharedStoreSerializer(
        help_text="The shared Xet store of this root: snapshot sizes count an entry for every repo linking it"
    )


class CacheStatsSerializer(serializers.Serializer):
    node = serializers.CharField()
    roots = CacheRootSerializer(many=True)


class CleanupParamsSerializer(serializers.Serializer):
    max_age_days = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=36500,
        help_text="Remove snapshots unused this long",
    )
    max_size_bytes = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=2**62,
        help_text="Per-root budget, least recently used go first",
    )
    keep_revisions = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=1000,
        help_text="Newest ready revisions kept per repo",
    )
    cache = serializers.ChoiceField(
        choices=[], required=False, allow_blank=True, help_text="One cache root by name"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["cache"].choices = sorted(settings.CACHE_ROOTS)


class CleanupRunSerializer(CleanupParamsSerializer):
    dry_run = serializers.BooleanField(default=False)


class CleanupItemSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["snapshot", "incomplete", "shared"])
    repo_id = serializers.CharField()
    revision = serializers.CharField(allow_blank=True)
    commit_sha = serializers.CharField(allow_blank=True)
    cache_root = serializers.CharField()
    path = serializers.CharField()
    reason = serializers.CharField()
    bytes = serializers.IntegerField()
    snapshot_id = serializers.IntegerField(allow_null=True)


class CleanupPlanSerializer(serializers.Serializer):
    max_age = serializers.FloatField(allow_null=True, help_text="Seconds")
    max_size = serializers.IntegerField(allow_null=True)
    keep_revisions = serializers.IntegerField(allow_null=True)
    dry_run = serializers.BooleanField()
    items = CleanupItemSerializer(many=True)
    total_bytes = serializers.IntegerField()
    cache_sizes = serializers.DictField(child=serializers.IntegerField())
    deleted = CleanupItemSerializer(many=True)
    skipped = serializers.ListField(child=serializers.CharField())
    bytes_freed = serializers.IntegerField()


def _policy(data: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, falling back to the configured policy (CACHE_CLEANUP_*) for each one left out."""
    configured = configured_policy()
    max_age = data["max_age_days"] * 86400 if data.get("max_age_days") is not None else configured.max_age
    return {
        "max_age": max_age,
        "max_size": data["max_size_bytes"] if data.get("max_size_bytes") is not None else configured.max_size,
        "keep_revisions": data.get("keep_revisions") or configured.keep_revisions,
        "cache": data.get("cache") or None,
    }


@extend_schema(tags=["cache"])
class CacheStatsView(ApiView):
    serializer_class = CacheStatsSerializer
    pagination_class = None

    @extend_schema(
        operation_id="cache_stats",
        summary="Cache roots of this node: disk space and what they hold",
        responses={200: CacheStatsSerializer, **errors()},
    )
    def get(self, request: Request) -> Response:
        roots = []
        for totals in cache_totals(user=request.user, include_shared_store=True).roots:
            root = {
                "name": totals.name,
                "exists": totals.path.exists(),
                "disk": disk_usage(totals.path),
                "snapshots": totals.snapshots,
                "size_bytes": totals.size_bytes,
                "by_status": totals.by_status,
                "shared_store": totals.shared_store,
            }
            if request.user.is_staff:  # a server path maps the machine: staff only, as on the health page
                root["path"] = str(totals.path)
            roots.append(root)
        return Response({"node": settings.NODE_NAME, "roots": roots})


@extend_schema(tags=["cache"])
class CleanupView(ApiView):
    serializer_class = CleanupPlanSerializer
    pagination_class = None

    def get_permissions(self):  # type: ignore[no-untyped-def]
        # The cache is shared by every user: only staff decide what leaves it (and see every repo in a plan).
        return [IsAuthenticated(), IsAdminUser()]

    @extend_schema(
        operation_id="cache_cleanup_plan",
        summary="Preview a cleanup (staff): what would be removed and why. Defaults to the configured policy",
        parameters=[CleanupParamsSerializer],
        responses={200: CleanupPlanSerializer, **errors(400, 403)},
    )
    def get(self, request: Request) -> Response:
        params = CleanupParamsSerializer(data=request.query_params.dict())  # "keep_revisions=" is an error
        params.is_valid(raise_exception=True)
        return Response(clean_cache(**_policy(params.validated_data), dry_run=True).as_json())

    @extend_schema(
        operation_id="cache_cleanup_run",
        summary="Run a cleanup (staff). Snapshots that became busy since planning are skipped and reported",
        request=CleanupRunSerializer,
        responses={200: CleanupPlanSerializer, **errors(400, 403)},
    )
    def post(self, request: Request) -> Response:
        params = CleanupRunSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        return Response(
            clean_cache(**_policy(params.validated_data), dry_run=params.validated_data["dry_run"]).as_json()
        )
