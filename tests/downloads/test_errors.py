"""What each failure becomes: code, retryable, an action, and never a token."""

from __future__ import annotations

import errno

import httpx2
import pytest
from huggingface_hub import errors as hf

from models_app.services.errors import CODES, DownloadError, action_for, classify

TOKEN = "hf_SecretToken1234567890abcdef"


def http_error(cls: type[hf.HfHubHTTPError], status: int, message: str = "boom") -> hf.HfHubHTTPError:
    request = httpx2.Request(
        "GET", "https://huggingface.co/api/models/org/name", headers={"authorization": f"Bearer {TOKEN}"}
    )
    return cls(message, response=httpx2.Response(status, request=request))


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


CASES = [
    (http_error(hf.GatedRepoError, 403), False, "gated"),
    (http_error(hf.GatedRepoError, 401), False, "gated"),
    (http_error(hf.RepositoryNotFoundError, 401), False, "auth_required"),
    (http_error(hf.RepositoryNotFoundError, 404), False, "not_found"),
    (http_error(hf.RepositoryNotFoundError, 404), True, "not_found"),
    (http_error(hf.RevisionNotFoundError, 404), False, "revision_not_found"),
    (http_error(hf.RemoteEntryNotFoundError, 404), False, "not_found"),
    (http_error(hf.HfHubHTTPError, 401), True, "auth_required"),
    (http_error(hf.HfHubHTTPError, 403), False, "auth_required"),
    (http_error(hf.HfHubHTTPError, 500), False, "network"),
    (http_error(hf.HfHubHTTPError, 429), False, "network"),
    (OSError(errno.ENOSPC, "No space left on device"), False, "disk_full"),
    (httpx2.ConnectError("connection refused"), False, "network"),
    (httpx2.ReadTimeout("timed out"), False, "network"),
    (httpx2.RemoteProtocolError("peer closed connection"), False, "network"),
    (chained(hf.LocalEntryNotFoundError("cannot find"), httpx2.ConnectError("refused")), False, "network"),
    (chained(ValueError("Force download failed"), http_error(hf.HfHubHTTPError, 503)), False, "network"),
    (
        chained(hf.LocalEntryNotFoundError("x"), http_error(hf.RepositoryNotFoundError, 401)),
        False,
        "auth_required",
    ),
    (OSError("Consistency check failed: file should be of size 10 but has size 5"), False, "network"),
    (ValueError("a bug"), False, "internal"),
]


@pytest.mark.parametrize(("exc", "has_token", "code"), CASES)
def test_classify_maps_library_errors_to_codes(
    exc: BaseException, has_token: bool, code: str, settings
) -> None:
    error = classify(exc, "org/name", has_token=has_token)
    assert error.code == code
    assert error.retryable is (code == "network")
    assert error.message and error.action
    assert TOKEN not in error.message and TOKEN not in error.action and TOKEN not in repr(error)


def test_gated_action_links_to_the_licence_page(settings) -> None:
    settings.HF_ENDPOINT = "https://hub.example"
    error = classify(http_error(hf.GatedRepoError, 403), "org/name")
    assert "https://hub.example/org/name" in error.action
    assert action_for("gated", "org/name") == error.action


def test_messages_are_redacted_even_when_a_library_quotes_a_token() -> None:
    error = classify(httpx2.ConnectError(f"failed with Authorization: Bearer {TOKEN}"), "org/name")
    assert TOKEN not in error.message and "[redacted]" in error.message
    assert TOKEN not in DownloadError("network", f"oops {TOKEN}").message


def test_every_code_has_an_action_and_unknown_codes_are_refused() -> None:
    assert set(CODES) >= {
        "auth_required",
        "gated",
        "not_found",
        "revision_not_found",
        "disk_full",
        "not_mlx",
        "integrity",
        "network",
        "cancelled",
        "invalid_repo_id",
        "invalid_revision",
    }
    assert all(action_for(code, "org/name") for code in CODES)
    with pytest.raises(ValueError):
        DownloadError("no_such_code", "x")
