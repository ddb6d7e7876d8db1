"""Pulls (download jobs): create (joining an active job of the same repo and revision), list, detail,
cancel, retry, and an SSE stream of one job's progress."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.errors import ApiError
from models_app.api.serializers import PullCreateSerializer, PullSerializer
from models_app.api.sse import EventStreamRenderer, job_events
from models_app.api.views.common import ApiView, errors, get_visible, id_parameter
from models_app.models import DownloadJob, HubCredential
from models_app.selectors.jobs import job_get, job_list
from models_app.services import credentials, hub, plan


@extend_schema(tags=["pulls"])
class PullListView(ApiView):
    serializer_class = PullSerializer

    @extend_schema(
        operation_id="pulls_list",
        summary="Download jobs you may see, newest first",
        parameters=[
            OpenApiParameter("state", OpenApiTypes.STR, enum=[c for c, _ in DownloadJob.State.choices]),
            OpenApiParameter(
                "active",
                OpenApiTypes.BOOL,
                description="true: only queued or running jobs; false: only finished ones",
            ),
        ],
        responses={200: PullSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        state = request.query_params.get("state")
        if state is not None and state not in DownloadJob.State.values:
            raise ApiError("invalid", f"state must be one of {', '.join(DownloadJob.State.values)}.")
        active = request.query_params.get("active")
        if active is not None:
            try:
                active = serializers.BooleanField().to_internal_value(active)
            except serializers.ValidationError:
                raise ApiError("invalid", "'active' must be true or false.") from None
        page = self.paginate_queryset(job_list(user=request.user, state=state, active=active))
        return self.get_paginated_response(PullSerializer(page, many=True).data)

    @extend_schema(
        operation_id="pulls_create",
        summary="Pull a model from the Hub; joins the active job of the same repo and revision if there is one",
        description="Another user's active pull of a private or gated repo (with their token) is not joined: "
        "409 `pull_in_progress` until it ends.",
        request=PullCreateSerializer,
        responses={
            201: OpenApiResponse(PullSerializer, description="A new job was queued"),
            200: OpenApiResponse(
                PullSerializer, description="An active job for this repo and revision was joined"
            ),
            **errors(400, 403, 404, 409),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = PullCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        credential = None
        if data.get("credential_id") is not None:
            credential = HubCredential.objects.filter(owner=request.user, pk=data["credential_id"]).first()
            if credential is None:
                raise ApiError("not_found", "You have no Hub credential with this id.")
        # A pattern that selects no file is the caller's mistake: a 400 with the repo's files, not a job.
        plan.check_patterns(
            data["repo_id"],
            data["revision"],
            allow_patterns=data.get("allow_patterns") or None,
            credential=credential or credentials.default_credential(request.user),
        )
        asked_at = timezone.now()
        job = hub.download_model(
            data["repo_id"],
            data["revision"],
            credential=credential,
            cache=data.get("cache") or None,
            force=data["force"],
            allow_patterns=data.get("allow_patterns") or None,
            user=request.user,
            node=data.get("node") or None,
        )
        visible = job_get(user=request.user, job_id=job.pk)
        if visible is not None:
            visible.node_choice = (
                job.node_choice
            )  # not a column: the picked machine's reason, for this answer
        body = PullSerializer(visible or job).data
        if visible is None:
            # Joined someone else's job: the caller learns its progress, not who asked or with which token.
            body.update(requested_by=None, credential_id=None, credential=None)
        created = job.created_at >= asked_at
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(tags=["pulls"])
class PullDetailView(ApiView):
    serializer_class = PullSerializer

    @extend_schema(
        operation_id="pulls_retrieve",
        summary="One job, with progress (bytes, files, speed, ETA) and its error if it failed",
        parameters=[id_parameter()],
        responses={200: PullSerializer, **errors(400, 404)},
    )
    def get(self, request: Request, id: str) -> Response:
        return Response(PullSerializer(get_visible(job_list(user=request.user), id, "pull")).data)


@extend_schema(tags=["pulls"])
class PullCancelView(ApiView):
    serializer_class = PullSerializer

    @extend_schema(
        operation_id="pulls_cancel",
        summary="Cancel a queued or running job (the worker stops at its next progress update)",
        request=None,
        parameters=[id_parameter()],
        responses={200: PullSerializer, **errors(400, 404, 409)},
    )
    def post(self, request: Request, id: str) -> Response:
        job = get_visible(job_list(user=request.user), id, "pull")
        job = hub.cancel_job(job, by=request.user) or job
        job.refresh_from_db()
        return Response(PullSerializer(job).data)


@extend_schema(tags=["pulls"])
class PullRetryView(ApiView):
    serializer_class = PullSerializer

    @extend_schema(
        operation_id="pulls_retry",
        summary="Queue a failed or cancelled job again",
        request=None,
        parameters=[id_parameter()],
        responses={200: PullSerializer, 201: PullSerializer, **errors(400, 404, 409)},
    )
    def post(self, request: Request, id: str) -> Response:
        job = get_visible(job_list(user=request.user), id, "pull")
        retried = hub.retry_job(job) or job
        retried = job_get(user=request.user, job_id=retried.pk) or retried
        return Response(
            PullSerializer(retried).data,
            status=status.HTTP_201_CREATED if retried.pk != job.pk else status.HTTP_200_OK,
        )


@extend_schema(tags=["pulls"])
class PullEventsView(ApiView):
    serializer_class = PullSerializer
    pagination_class = None
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        # Errors are JSON with their status, whatever the Accept header: EventSource clients see the status
        # (and give up), scripts read the body.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)

    @extend_schema(
        operation_id="pulls_events",
        summary="Server-sent events for one job until it ends",
        description=(
            "`text/event-stream`. Events: `state` (first, and on every state change) and `progress` (when bytes "
            "or files move), each with the job as JSON data (the same shape as the job detail). The stream "
            "closes after the event reporting a final state (succeeded, failed, cancelled). Comments "
            "(`: keep-alive`) are sent while nothing changes."
        ),
        parameters=[id_parameter(), OpenApiParameter("format", exclude=True)],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR, description="`event: state|progress` / `data: <job JSON>` frames"
            ),
            **errors(400, 404),
        },
    )
    def get(self, request: Request, id: str) -> StreamingHttpResponse:
        job = get_visible(job_list(user=request.user), id, "pull")
        response = StreamingHttpResponse(
            job_events(job.pk, lambda j: PullSerializer(j).data), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
        return response
