"""API keys of the requesting user: list, create (the raw key is in that one response), revoke."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.serializers import ApiKeyCreatedSerializer, ApiKeySerializer
from models_app.api.views.common import ApiView, errors, get_visible, id_parameter
from models_app.services import apikeys


@extend_schema(tags=["keys"])
class KeyListView(ApiView):
    serializer_class = ApiKeySerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return apikeys.list_apikeys(user=self.request.user)

    @extend_schema(
        operation_id="keys_list",
        summary="Your API keys (never the secret part)",
        responses={200: ApiKeySerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ApiKeySerializer(page, many=True).data)

    @extend_schema(
        operation_id="keys_create",
        summary="Create a key; the raw key is returned once",
        request=ApiKeySerializer,
        responses={201: ApiKeyCreatedSerializer, **errors(400, 409)},
    )
    def post(self, request: Request) -> Response:
        serializer = ApiKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = apikeys.create_apikey(user=request.user, name=serializer.validated_data["name"])
        key.key = raw  # type: ignore[attr-defined]
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["keys"])
class KeyDetailView(ApiView):
    serializer_class = ApiKeySerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return apikeys.list_apikeys(user=self.request.user)

    @extend_schema(
        operation_id="keys_retrieve",
        parameters=[id_parameter()],
        responses={200: ApiKeySerializer, **errors(400, 404)},
    )
    def get(self, request: Request, id: str) -> Response:
        return Response(ApiKeySerializer(get_visible(self.get_queryset(), id, "API key")).data)

    @extend_schema(
        operation_id="keys_revoke",
        summary="Revoke a key (it stops working at once; revoking twice is harmless)",
        parameters=[id_parameter()],
        responses={200: ApiKeySerializer, **errors(400, 404)},
    )
    def delete(self, request: Request, id: str) -> Response:
        key = apikeys.revoke_apikey(get_visible(self.get_queryset(), id, "API key"))
        return Response(ApiKeySerializer(key).data)
