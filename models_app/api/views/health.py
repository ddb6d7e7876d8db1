"""The system's health, as the health page sees it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.serializers import HealthSerializer
from models_app.api.views.common import ApiView, errors
from models_app.services.health import health_for


@extend_schema(tags=["health"])
class HealthView(ApiView):
    serializer_class = HealthSerializer
    pagination_class = None

    @extend_schema(
        operation_id="health",
        summary="Database, Redis, workers per queue, MLX backend and cache disks",
        description="Staff see everything (worker names, cache paths, versions, errors); other users see each "
        "component's state, worker counts, disk space and the loaded models they may see.",
        responses={200: HealthSerializer, **errors()},
    )
    def get(self, request: Request) -> Response:
        # 200 even when something is down: the body says what; /healthz is the probe that fails.
        return Response(health_for(request.user))
