"""Models, as snapshots (one commit of a repo in one cache root on one node): list, detail, delete, verify,
load and unload."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.errors import ApiError
from models_app.api.serializers import (
    DeletePlanSerializer,
    LoadResultSerializer,
    SnapshotDetailSerializer,
    SnapshotSerializer,
    VerifyResultSerializer,
)
from models_app.api.views.common import ApiView, errors, get_visible, id_parameter
from models_app.models import Snapshot
from models_app.selectors.snapshots import snapshot_list
from models_app.services import cache, inference, verify

# Text filters as the serializer below accepts them (DRF refuses NUL characters; PostgreSQL could not store them).
TEXT_FILTER = {"type": "string", "maxLength": 200, "pattern": "^[^\\x00]*$"}


class ModelFilterSerializer(serializers.Serializer):
    repo = serializers.CharField(required=False, allow_blank=True, max_length=200, help_text="Exact repo id")
    status = serializers.MultipleChoiceField(
        choices=Snapshot.Status.choices,
        required=False,
        help_text="One or more statuses (repeat the parameter); default: every status but deleted",
    )
    q = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Words that must each appear in the repo id or the model type (as on the Models page)",
    )
    node = serializers.CharField(required=False, allow_blank=True, max_length=200)


@extend_schema(tags=["models"])
class ModelListView(ApiView):
    serializer_class = SnapshotSerializer

    @extend_schema(
        operation_id="models_list",
        summary="Snapshots you may see, filtered by repo, status and a search string",
        parameters=[
            OpenApiParameter("repo", TEXT_FILTER, description="Exact repo id, e.g. org/name"),
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                enum=[c for c, _ in Snapshot.Status.choices],
                many=True,
                explode=True,
                description="Default: every status but deleted",
            ),
            OpenApiParameter(
                "q",
                TEXT_FILTER,
                description="Words that must each appear in the repo id or the model type (case-insensitive)",
            ),
            OpenApiParameter("node", TEXT_FILTER),
        ],
        responses={200: SnapshotSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        filters = ModelFilterSerializer(
            data={**request.query_params.dict(), "status": request.query_params.getlist("status")}
            if "status" in request.query_params
            else request.query_params.dict()
        )
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        snapshots = snapshot_list(
            user=request.user,
            query=data.get("q"),
            statuses=data.get("status") or None,
            repo_id=data.get("repo") or None,
            node=data.get("node") or None,
        )
        page = self.paginate_queryset(snapshots.order_by("repository__repo_id", "-created_at", "-id"))
        return self.get_paginated_response(SnapshotSerializer(page, many=True).data)


@extend_schema(tags=["models"])
class ModelDetailView(ApiView):
    serializer_class = SnapshotDetailSerializer

    @extend_schema(
        operation_id="models_retrieve",
        parameters=[id_parameter(description="Snapshot id")],
        responses={200: SnapshotDetailSerializer, **errors(400, 404)},
    )
    def get(self, request: Request, id: str) -> Response:
        return Response(
            SnapshotDetailSerializer(
                get_visible(snapshot_list(user=request.user, include_deleted=True), id, "model")
            ).data
        )

    @extend_schema(
        operation_id="models_destroy",
        summary="Delete this snapshot's files from the cache (staff, or whoever pulled the repo)",
        parameters=[
            id_parameter(description="Snapshot id"),
            OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Only report what would be freed"),
        ],
        responses={200: DeletePlanSerializer, **errors(400, 403, 404, 409)},
    )
    def delete(self, request: Request, id: str) -> Response:
        snapshot = get_visible(snapshot_list(user=request.user, include_deleted=True), id, "model")
        if snapshot.status == Snapshot.Status.DELETED:
            raise ApiError("not_found", "This snapshot is already deleted.")
        try:
            dry_run = serializers.BooleanField().to_internal_value(
                request.query_params.get("dry_run", "false")
            )
        except serializers.ValidationError:
            raise ApiError("invalid", "'dry_run' must be true or false.") from None
        plan = cache.delete_model(
            snapshot.repository.repo_id, snapshot.commit_sha, user=request.user, dry_run=dry_run
        )
        return Response(plan.as_json())


@extend_schema(tags=["models"])
class ModelVerifyView(ApiView):
    serializer_class = VerifyResultSerializer
    pagination_class = None

    @extend_schema(
        operation_id="models_verify",
        summary="Hash every file against the Hub's metadata and update the status",
        request=None,
        parameters=[id_parameter(description="Snapshot id")],
        responses={200: VerifyResultSerializer, **errors(400, 404)},
    )
    def post(self, request: Request, id: str) -> Response:
        snapshot = get_visible(snapshot_list(user=request.user, include_deleted=True), id, "model")
        # Synchronous: hashing runs at disk speed (seconds per GB), and the caller wants the verdict.
        return Response(verify.verify_model(snapshot).as_json())


def _load_or_unload(request: Request, raw_id: str, *, load: bool) -> Response:
    """Queue a load or unload on the inference worker. Accepted, not done: a big model takes a while to load,
    and the worker's heartbeat (GET /api/v1/health, `mlx.workers`) shows it once it is in memory."""
    snapshot = get_visible(snapshot_list(user=request.user, include_deleted=True), raw_id, "model")
    if load and snapshot.status != Snapshot.Status.READY:
        action = (
            f"mlx-lm also needs {', '.join(snapshot.missing_files)}: pull it without allow_patterns."
            if snapshot.status == Snapshot.Status.PARTIAL
            else ""
        )
        raise ApiError("not_ready", f"This snapshot is {snapshot.status}, not ready.", action=action)
    loaded = snapshot.id in inference.loaded_models()
    try:
        if load:
            inference.request_load(snapshot.id, user=request.user)
            queued = True
        else:
            queued = inference.request_unload(snapshot.id, user=request.user)
    except inference.InferenceUnavailable as err:
        raise ApiError("inference_unavailable", str(err), action="Start one (`make run` does).") from None
    except inference.UnloadRefused as err:
        raise ApiError("permission_denied", str(err)) from None
    return Response(
        {
            "snapshot_id": snapshot.id,
            "repo_id": snapshot.repository.repo_id,
            "queued": queued,
            "loaded": loaded,
        },
        status=status.HTTP_202_ACCEPTED,
    )


@extend_schema(tags=["models"])
class ModelLoadView(ApiView):
    serializer_class = LoadResultSerializer
    pagination_class = None

    @extend_schema(
        operation_id="models_load",
        summary="Load into the inference worker now, so the first completion is fast",
        request=None,
        parameters=[id_parameter(description="Snapshot id")],
        responses={202: LoadResultSerializer, **errors(400, 404, 409, 503)},
    )
    def post(self, request: Request, id: str) -> Response:
        return _load_or_unload(request, id, load=True)


@extend_schema(tags=["models"])
class ModelUnloadView(ApiView):
    serializer_class = LoadResultSerializer
    pagination_class = None

    @extend_schema(
        operation_id="models_unload",
        summary="Unload from the inference worker, freeing its memory",
        request=None,
        parameters=[id_parameter(description="Snapshot id")],
        responses={202: LoadResultSerializer, **errors(400, 403, 404, 503)},
    )
    def post(self, request: Request, id: str) -> Response:
        return _load_or_unload(request, id, load=False)
