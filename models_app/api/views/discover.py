"""Search the Hub for MLX models (the discover service), each with its fits-here verdict."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.errors import ApiError
from models_app.api.serializers import DiscoverPageSerializer, DiscoverQuerySerializer
from models_app.api.views.common import ApiView, errors
from models_app.services import credentials, discover


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
                credential=credentials.default_credential(request.user),
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
        "results": [{**r.as_json(), "pull_url": discover.pull_url(r.hub.repo_id)} for r in page.results],
        "groups": [
            {"base_model": g.base_model, "repo_ids": [r.hub.repo_id for r in g.results]} for g in page.groups
        ],
    }
