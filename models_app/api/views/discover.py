"""Search the Hub for MLX models (the discover service), each with its fits-here verdict."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.errors import ApiError
from models_app.api.serializers import (
    DiscoverDetailsQuerySerializer,
    DiscoverPageSerializer,
    DiscoverQuerySerializer,
    DiscoverResultSerializer,
)
from models_app.api.views.common import ApiView, errors
from models_app.services import credentials, discover, discover_details


@extend_schema(tags=["discover"])
class DiscoverView(ApiView):
    serializer_class = DiscoverPageSerializer
    pagination_class = None

    @extend_schema(
        operation_id="discover",
        summary="Search the Hub for MLX models, with size, quantization and whether each fits here",
        parameters=[DiscoverQuerySerializer],
        responses={200: DiscoverPageSerializer, **errors(400, 503)},
    )
    def get(self, request: Request) -> Response:
        query = DiscoverQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        data = query.validated_data
        try:
            page = discover.search(
                data["q"],
                sort=data["sort"],
                author=data["author"],
                mlx_only=data["mlx_only"],
                credentials=credentials.search_credentials(request.user),
                cursor=data["cursor"],
                user=request.user,
            )
        except discover.DiscoverError as err:
            raise ApiError(err.code, err.message) from None
        return Response(DiscoverPageSerializer(as_api(page)).data)


def as_api(page: discover.DiscoverPage) -> dict[str, Any]:
    return {
        "query": page.query,
        "sort": page.sort,
        "from_cache": page.from_cache,
        "results": [result_json(r) for r in page.results],
        "groups": [
            {"base_model": g.base_model, "repo_ids": [r.hub.repo_id for r in g.results]} for g in page.groups
        ],
        "next_cursor": page.next_cursor,
        "warnings": page.warnings,
    }


def result_json(r: discover.DiscoverResult) -> dict[str, Any]:
    return {
        **r.as_json(),
        "pull_url": discover.pull_url(r.hub.repo_id),
        "details_pending": r.hub.weights_bytes is None,
        "details_url": discover.details_url(r.hub.repo_id),
    }


@extend_schema(tags=["discover"])
class DiscoverDetailsView(ApiView):
    serializer_class = DiscoverResultSerializer
    pagination_class = None

    @extend_schema(
        operation_id="discover_details",
        summary="One search result checked on its own: sizes, quantization and verdict from its model info or "
        "its safetensors headers (for a result whose listing said nothing of its weights)",
        parameters=[DiscoverDetailsQuerySerializer],
        responses={200: DiscoverResultSerializer, **errors(400, 404, 503)},
    )
    def get(self, request: Request) -> Response:
        query = DiscoverDetailsQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        try:
            result = discover_details.details(
                query.validated_data["repo_id"],
                credentials=credentials.search_credentials(request.user),
                user=request.user,
            )
        except discover.DiscoverError as err:
            raise ApiError(err.code, err.message) from None
        return Response(DiscoverResultSerializer(result_json(result)).data)
