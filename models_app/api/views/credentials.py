"""Hub credentials of the requesting user. The token is write-only: accepted on create, never returned."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.errors import ApiError
from models_app.api.serializers import CredentialSerializer, CredentialTestSerializer
from models_app.api.views.common import ApiView, errors, get_visible, id_parameter
from models_app.models import HubCredential
from models_app.services import credentials


def _own(request: Request):  # type: ignore[no-untyped-def]
    # Even staff see only their own tokens: a credential is personal, and pulls name one by id.
    return HubCredential.objects.filter(owner=request.user).order_by("name", "id")


@extend_schema(tags=["credentials"])
class CredentialListView(ApiView):
    serializer_class = CredentialSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return _own(self.request)

    @extend_schema(
        operation_id="credentials_list",
        summary="Your Hub tokens, masked",
        responses={200: CredentialSerializer(many=True), **errors(400)},
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(CredentialSerializer(page, many=True).data)

    @extend_schema(
        operation_id="credentials_create",
        summary="Store a Hub token (encrypted; never returned)",
        request=CredentialSerializer,
        responses={201: CredentialSerializer, **errors(400, 409)},
    )
    def post(self, request: Request) -> Response:
        serializer = CredentialSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            with transaction.atomic():
                credential = credentials.create_credential(
                    owner=request.user, name=data["name"], token=data["token"]
                )
        except credentials.CredentialError as exc:
            raise ApiError("invalid_credential", str(exc)) from None
        except IntegrityError:
            raise ApiError(
                "conflict",
                f"You already have a credential named {data['name'].strip()!r}.",
                action="Pick another name.",
            ) from None
        return Response(CredentialSerializer(credential).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["credentials"])
class CredentialDetailView(ApiView):
    serializer_class = CredentialSerializer

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return _own(self.request)

    @extend_schema(
        operation_id="credentials_retrieve",
        parameters=[id_parameter()],
        responses={200: CredentialSerializer, **errors(400, 404)},
    )
    def get(self, request: Request, id: str) -> Response:
        return Response(CredentialSerializer(get_visible(self.get_queryset(), id, "credential")).data)

    @extend_schema(
        operation_id="credentials_destroy",
        summary="Delete a stored token",
        parameters=[id_parameter()],
        responses={204: None, **errors(400, 404)},
    )
    def delete(self, request: Request, id: str) -> Response:
        get_visible(self.get_queryset(), id, "credential").delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["credentials"])
class CredentialTestView(ApiView):
    serializer_class = CredentialTestSerializer
    pagination_class = None

    @extend_schema(
        operation_id="credentials_test",
        summary="Ask the Hub who the token belongs to",
        request=None,
        parameters=[id_parameter()],
        responses={200: CredentialTestSerializer, **errors(400, 404)},
    )
    def post(self, request: Request, id: str) -> Response:
        credential = get_visible(_own(request), id, "credential")
        result = credentials.check_credential(credential)
        return Response(
            {
                "ok": result["ok"],
                "hub_username": result.get("username", ""),
                "message": result.get("error", ""),
                "credential": CredentialSerializer(credential).data,
            }
        )


@extend_schema(tags=["credentials"])
class CredentialDefaultView(ApiView):
    serializer_class = CredentialSerializer
    pagination_class = None

    @extend_schema(
        operation_id="credentials_set_default",
        summary="Make this the token your pulls use when they name none (credential_id omitted)",
        request=None,
        parameters=[id_parameter()],
        responses={200: CredentialSerializer, **errors(400, 404)},
    )
    def post(self, request: Request, id: str) -> Response:
        credential = credentials.set_default_credential(get_visible(_own(request), id, "credential"))
        return Response(CredentialSerializer(credential).data)

    @extend_schema(
        operation_id="credentials_unset_default",
        summary="Stop using this token by default: pulls that name no token send none",
        parameters=[id_parameter()],
        responses={200: CredentialSerializer, **errors(400, 404)},
    )
    def delete(self, request: Request, id: str) -> Response:
        credential = get_visible(_own(request), id, "credential")
        return Response(
            CredentialSerializer(credentials.set_default_credential(credential, default=False)).data
        )
