"""Download errors: one exception with a code the UI and API show, a message, and what the user should do.

`classify` maps whatever huggingface_hub, httpx or the OS raised to one of these. Messages never carry a
token: every message goes through `redaction.redact`, and the texts we build never quote request headers."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from django.conf import settings

from models_app.redaction import redact

AUTH_REQUIRED = "auth_required"
GATED = "gated"
NOT_FOUND = "not_found"
REVISION_NOT_FOUND = "revision_not_found"
DISK_FULL = "disk_full"
NOT_MLX = "not_mlx"
INTEGRITY = "integrity"
NETWORK = "network"
CANCELLED = "cancelled"
INVALID_REPO_ID = "invalid_repo_id"
INVALID_REVISION = "invalid_revision"
INVALID_REQUEST = "invalid_request"  # a bad cache root name or allow pattern: the caller's mistake
UNKNOWN_NODE = "unknown_node"  # a pull for a machine that runs no download worker
NO_NODE_WITH_ROOM = "no_node_with_room"  # a pull for "any" node: no live one has the disk for it
INTERNAL = "internal"  # a bug of ours: never retried, the traceback is in the worker log
# Another user's active pull of the same repo, revision and node, which this user may not see (a private or
# gated repo pulled with their token): it cannot be joined, and the constraint allows no second job.
PULL_IN_PROGRESS = "pull_in_progress"


@dataclass(frozen=True)
class ErrorCode:
    """Everything the product says about one error code, in one place: the API's HTTP status, whether the
    worker retries it, what the user should do, the form field it is shown next to and the link under it.
    Pages, the API, the CLI and the serializers derive theirs from here (tests/foundation/test_error_codes.py
    fails when a raised code is missing)."""

    http_status: int
    action: str = ""  # may use {endpoint} and {repo_id}
    retryable: bool = False
    field: str = ""  # the pull form's field the error belongs next to; "" shows it above the form
    link_text: str = ""
    # A URL name to reverse (with an optional #fragment), or an address using {endpoint} and {repo_id}.
    link: str = ""


# The download codes: each has an action (a job row stores code and message; the action is derived from here).
CODES: dict[str, ErrorCode] = {
    AUTH_REQUIRED: ErrorCode(
        401,
        "Add a Hugging Face token that can read {repo_id} and pull again.",
        field="credential",
        link_text="Add a Hub token in Settings",
        link="settings#credentials",
    ),
    GATED: ErrorCode(
        403,
        "Accept the licence at {endpoint}/{repo_id} with the Hub account of your token, then pull again.",
        field="repo",
        link_text="Accept the licence on the Hub",
        link="{endpoint}/{repo_id}",
    ),
    NOT_FOUND: ErrorCode(404, "Check the repository id (org/name) on {endpoint}.", field="repo"),
    REVISION_NOT_FOUND: ErrorCode(
        404, "Check the branch, tag or commit on {endpoint}/{repo_id}.", field="revision"
    ),
    DISK_FULL: ErrorCode(
        507,
        "Free some space (delete unused models) or pull into another cache root.",
        link_text="Open the cache page",
        link="cache",
    ),
    NOT_MLX: ErrorCode(422, "Pick an MLX conversion of this model (for example from mlx-community)."),
    INTEGRITY: ErrorCode(
        502, "Pull again; if it fails again, the files on the Hub do not match their metadata."
    ),
    NETWORK: ErrorCode(502, "Check the connection to {endpoint} and retry.", retryable=True),
    CANCELLED: ErrorCode(409, "Pull again to restart the download."),
    INVALID_REPO_ID: ErrorCode(
        400, "Use a Hub repository id like mlx-community/SmolLM2-135M-Instruct-8bit.", field="repo"
    ),
    INVALID_REVISION: ErrorCode(
        400, "Use a branch or tag name, or a 40-character commit SHA.", field="revision"
    ),
    INVALID_REQUEST: ErrorCode(400, "Fix the request and try again.", field="allow_patterns"),
    # Like an unknown credential id: the thing named does not exist (now).
    UNKNOWN_NODE: ErrorCode(404, "Start the workers on that machine (make run there), or pick another node."),
    NO_NODE_WITH_ROOM: ErrorCode(
        507, "Free some space on one of the machines (delete unused models), or start a machine with room."
    ),
    INTERNAL: ErrorCode(500, "Retry; if it happens again, report it with the worker log."),
    PULL_IN_PROGRESS: ErrorCode(
        409, "Pull again once it has ended: your pull then runs with your own access to the Hub."
    ),
}

# The codes of the other services' errors and of the API's own refusals; their action, when they have one, is
# written where they are raised.
OTHER_CODES: dict[str, ErrorCode] = {
    "invalid": ErrorCode(400),  # the request asked for something the service refuses
    "invalid_id": ErrorCode(400),
    "invalid_credential": ErrorCode(400),
    "invalid_local_model": ErrorCode(400),
    "cache_error": ErrorCode(400),
    "unknown_cache_root": ErrorCode(400),
    "ambiguous_revision": ErrorCode(400),
    "forbidden": ErrorCode(403),
    "permission_denied": ErrorCode(403),
    "model_not_found": ErrorCode(404),
    "conflict": ErrorCode(409),
    "in_use": ErrorCode(409),
    "not_ready": ErrorCode(409),  # a snapshot that cannot be loaded yet (partial, downloading, invalid)
    "too_many_keys": ErrorCode(409),  # a valid request the user's current keys rule out: revoke one
    "model_load_failed": ErrorCode(500),
    "unavailable": ErrorCode(503),
    "inference_unavailable": ErrorCode(503),
    "node_down": ErrorCode(503),  # every machine holding the model is down: said at once, naming them
}

ALL_CODES: dict[str, ErrorCode] = CODES | OTHER_CODES


def http_status(code: str) -> int:
    """The API's HTTP status for an error code; 400 for one not in the table (the test keeps that empty)."""
    spec = ALL_CODES.get(code)
    return spec.http_status if spec is not None else 400


def link_for(code: str, repo_id: str = "") -> tuple[str, str]:
    """(address, text) of the link shown under an error on a page, or ("", "") when it has none. An address
    that needs the repo id has none without one."""
    from django.urls import reverse

    spec = CODES.get(code)
    if spec is None or not spec.link:
        return "", ""
    if "{" in spec.link:
        if "{repo_id}" in spec.link and not repo_id:
            return "", ""
        return spec.link.format(endpoint=settings.HF_ENDPOINT, repo_id=repo_id), spec.link_text
    name, _, fragment = spec.link.partition("#")
    return reverse(name) + (f"#{fragment}" if fragment else ""), spec.link_text


class DownloadError(Exception):
    """A download failure the user can act on. `retryable` says whether the worker retries it by itself."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        action: str | None = None,
        retryable: bool | None = None,
        repo_id: str = "",
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown download error code {code!r}")
        spec = CODES[code]
        self.code = code
        self.message = redact(message)
        self.action = redact(action if action is not None else action_for(code, repo_id))
        self.retryable = spec.retryable if retryable is None else retryable
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"DownloadError({self.code!r}, {self.message!r})"

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "action": self.action,
            "retryable": self.retryable,
        }


def action_for(code: str, repo_id: str = "") -> str:
    """What the user should do about an error code (the job row stores code and message only)."""
    spec = CODES.get(code)
    if spec is None:
        return ""
    return spec.action.format(endpoint=settings.HF_ENDPOINT, repo_id=repo_id or "…")


def action_for_job(job) -> str:  # type: ignore[no-untyped-def]
    """The action for a failed job: for a refused token (or a private repo the token cannot see, which the
    Hub answers 404), it names the requester's stored tokens and how to pick one."""
    if job.error_code == AUTH_REQUIRED or (job.error_code == NOT_FOUND and job.credential_id):
        from models_app.services.credentials import selection_hint

        hint = selection_hint(job.repository.repo_id, user_id=job.requested_by_id, used_id=job.credential_id)
        return redact(hint)
    return action_for(job.error_code, job.repository.repo_id) if job.error_code else ""


class DownloadCancelled(DownloadError):
    def __init__(self, message: str = "The download was cancelled.") -> None:
        super().__init__(CANCELLED, message)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (huggingface_hub wraps network errors two deep)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _short(exc: BaseException) -> str:
    """One redacted line about a library exception, for the end of our own message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {text}"[:240])


def classify(
    exc: BaseException, repo_id: str, *, has_token: bool = False, revision: str = ""
) -> DownloadError:
    """The DownloadError for anything a download raised: our own error anywhere in the chain, else the first
    exception the Hub's or the network's vocabulary names, else one that says try again later, else INTERNAL."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, DownloadError):
            return e
    endpoint = settings.HF_ENDPOINT
    for e in chain:
        error = _named_error(e, repo_id, has_token=has_token, revision=revision, endpoint=endpoint)
        if error is not None:
            return error
    for e in chain:
        error = _transient_error(e, repo_id, endpoint=endpoint)
        if error is not None:
            return error
    return DownloadError(
        INTERNAL, f"Unexpected error while downloading {repo_id} ({_short(exc)}).", repo_id=repo_id
    )


def _named_error(
    e: BaseException, repo_id: str, *, has_token: bool, revision: str, endpoint: str
) -> DownloadError | None:
    """Order matters: GatedRepoError is a subclass of RepositoryNotFoundError, which is a subclass of
    HfHubHTTPError, which is an OSError."""
    import httpx2
    from huggingface_hub import errors as hf

    def err(code: str, message: str) -> DownloadError:
        return DownloadError(code, message, repo_id=repo_id)

    if isinstance(e, hf.GatedRepoError):
        return err(GATED, f"{repo_id} is gated: its licence must be accepted on the Hub before download.")
    if isinstance(e, hf.RepositoryNotFoundError):
        return _repo_not_found(e, repo_id, has_token=has_token, endpoint=endpoint)
    if isinstance(e, hf.RevisionNotFoundError):
        named = f"The revision {revision[:200]!r}" if revision else "This revision"
        return err(REVISION_NOT_FOUND, f"{named} of {repo_id} was not found on {endpoint}.")
    if isinstance(e, hf.RemoteEntryNotFoundError):
        return err(NOT_FOUND, f"A file of {repo_id} was not found on {endpoint}.")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return err(DISK_FULL, "The disk holding the cache is full.")
    if isinstance(e, hf.HfHubHTTPError):
        return _http_error(e, repo_id, has_token=has_token, endpoint=endpoint)
    if isinstance(e, httpx2.TimeoutException):
        return err(NETWORK, f"{endpoint} stopped answering ({_short(e)}).")
    if isinstance(e, httpx2.TransportError):
        return err(NETWORK, f"Lost the connection to {endpoint} ({_short(e)}).")
    return None


def _repo_not_found(e: BaseException, repo_id: str, *, has_token: bool, endpoint: str) -> DownloadError:
    if _status(e) == 401 and not has_token:
        # The Hub (and mirrors such as olah) answer an anonymous caller 401 for a private repo and for one that
        # does not exist alike: say both, and what to do for each.
        message = (
            f"{repo_id} was not found on {endpoint}, or it is private (without a token the Hub answers both "
            "alike): check the id; a private repo needs a token that can read it."
        )
        return DownloadError(AUTH_REQUIRED, message, repo_id=repo_id)
    if has_token:
        message = f"{repo_id} was not found on {endpoint}, or the token cannot read it."
    else:
        message = f"{repo_id} was not found on {endpoint}."
    return DownloadError(NOT_FOUND, message, repo_id=repo_id)


def _http_error(e: BaseException, repo_id: str, *, has_token: bool, endpoint: str) -> DownloadError:
    status = _status(e)
    if status in (401, 403):
        what = "refused the token" if has_token else "requires a token"
        return DownloadError(
            AUTH_REQUIRED, f"{endpoint} {what} for {repo_id} (HTTP {status}).", repo_id=repo_id
        )
    if status == 404:
        return DownloadError(NOT_FOUND, f"{repo_id} was not found on {endpoint}.", repo_id=repo_id)
    return DownloadError(NETWORK, f"{endpoint} answered HTTP {status} for {repo_id}.", repo_id=repo_id)


def _transient_error(e: BaseException, repo_id: str, *, endpoint: str) -> DownloadError | None:
    """huggingface_hub turns unreachable servers and short bodies into these; try again later."""
    from huggingface_hub import errors as hf

    if isinstance(e, hf.LocalEntryNotFoundError | hf.FileMetadataError | ConnectionError | TimeoutError):
        return DownloadError(
            NETWORK, f"Could not download {repo_id} from {endpoint} ({_short(e)}).", repo_id=repo_id
        )
    if isinstance(e, OSError) and "Consistency check failed" in str(e):
        return DownloadError(
            NETWORK, f"A file of {repo_id} arrived truncated from {endpoint}.", repo_id=repo_id
        )
    return None
