"""Input checks for downloads, run before any I/O: repo ids, revisions, Hub URLs, paths inside a repo.

Our rules are stricter than huggingface_hub's (which we also apply): a repo id is exactly `org/name` in
plain ASCII, so lookalike characters, NUL bytes and megabyte-long strings never reach the Hub, the
cache layout or a log line."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from django.conf import settings

from models_app.services.errors import (
    INTEGRITY,
    INVALID_REPO_ID,
    INVALID_REQUEST,
    INVALID_REVISION,
    DownloadError,
)

MAX_PART = 96
MAX_REVISION = 200
_PART_RE = re.compile(r"[A-Za-z0-9._-]{1,96}", re.ASCII)
_SHA_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)
# Git ref names: no control chars, space, ~ ^ : ? * [ \ (git check-ref-format), no "@{", no "//".
_REVISION_RE = re.compile(r"[A-Za-z0-9._/+=-]{1,200}", re.ASCII)
_PR_RE = re.compile(r"refs/pr/[1-9][0-9]{0,8}", re.ASCII)


def _shown(value: object) -> str:
    """A safe, short rendering of bad input for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}…"


def validate_repo_id(value: object) -> str:
    """Return `value` if it is an `org/name` Hub model id we accept, else raise invalid_repo_id."""

    def bad(why: str) -> DownloadError:
        return DownloadError(INVALID_REPO_ID, f"Invalid repository id {_shown(value)}: {why}.")

    if not isinstance(value, str) or not value:
        raise bad("it must be a non-empty string like org/name")
    if len(value) > 2 * MAX_PART + 1:
        raise bad(f"it is longer than {2 * MAX_PART + 1} characters")
    if not value.isascii() or not value.isprintable():
        raise bad("only ASCII letters, digits, '.', '_' and '-' are allowed")
    parts = value.split("/")
    if len(parts) != 2:
        raise bad("it must be exactly org/name")
    for part in parts:
        if not _PART_RE.fullmatch(part):
            raise bad(f"each part must be 1 to {MAX_PART} of A-Z a-z 0-9 . _ -")
        if part[0] in ".-" or part[-1] in ".-":
            raise bad("a part may not start or end with '.' or '-'")
        if ".." in part or "--" in part:
            raise bad("'..' and '--' are not allowed")
    if value.endswith(".git"):
        raise bad("it may not end with .git")

    from huggingface_hub.utils import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hf_validate

    try:
        hf_validate(value)
    except HFValidationError as exc:  # their rules may grow stricter than ours
        raise bad("huggingface_hub rejects it") from exc
    return value


def validate_revision(value: object) -> str:
    """A branch or tag name, `refs/pr/N`, or a 40-hex commit SHA; else raise invalid_revision."""

    def bad(why: str) -> DownloadError:
        return DownloadError(INVALID_REVISION, f"Invalid revision {_shown(value)}: {why}.")

    if not isinstance(value, str) or not value:
        raise bad("it must be a non-empty string")
    if len(value) > MAX_REVISION:
        raise bad(f"it is longer than {MAX_REVISION} characters")
    if not value.isascii() or not value.isprintable():
        raise bad("control characters and non-ASCII characters are not allowed")
    if _SHA_RE.fullmatch(value) or _PR_RE.fullmatch(value):
        return value
    if not _REVISION_RE.fullmatch(value):
        raise bad("only letters, digits and . _ / + = - are allowed")
    if value.startswith("refs/pr/"):
        raise bad("pull request refs look like refs/pr/<number>")
    parts = value.split("/")
    if any(not part for part in parts):
        raise bad("empty path segments are not allowed")
    for part in parts:
        # The revision becomes a path under refs/ in the cache: nothing that climbs or hides.
        if part in (".", "..") or part.startswith(".") or part.endswith(".lock") or ".." in part:
            raise bad("'..', hidden segments and '.lock' are not allowed")
    if value.endswith(".") or value.startswith("-"):
        raise bad("it may not end with '.' or start with '-'")
    return value


def parse_hub_url(url: str) -> tuple[str, str]:
    """`https://huggingface.co/org/name` or `.../org/name/tree/<rev>` -> (repo_id, revision).

    Accepts the configured HF_ENDPOINT's host, huggingface.co and hf.co; a bare `org/name` passes through
    with revision main."""
    if not isinstance(url, str) or len(url) > 2048:
        raise DownloadError(
            INVALID_REPO_ID, "Invalid Hub URL: it must be a string of at most 2048 characters."
        )
    text = url.strip()
    if "://" not in text:
        return validate_repo_id(text), "main"
    parts = urlsplit(text)
    allowed = {"huggingface.co", "www.huggingface.co", "hf.co", urlsplit(settings.HF_ENDPOINT).netloc}
    if parts.scheme not in ("http", "https") or parts.netloc.lower() not in allowed:
        raise DownloadError(INVALID_REPO_ID, f"Not a Hugging Face Hub model URL: {_shown(url)}.")
    segments = [unquote(s) for s in parts.path.strip("/").split("/")]
    if segments and segments[0] == "models":  # huggingface.co/models/org/name is an old alias
        segments = segments[1:]
    if len(segments) < 2:
        raise DownloadError(INVALID_REPO_ID, f"The URL {_shown(url)} does not name a model repository.")
    repo_id = validate_repo_id("/".join(segments[:2]))
    rest = segments[2:]
    if not rest:
        return repo_id, "main"
    if rest[0] in ("tree", "blob", "resolve") and len(rest) >= 2:
        # The revision is one URL-encoded segment (refs%2Fpr%2F1), or refs/pr/N spelled out.
        if rest[1] == "refs" and len(rest) >= 4 and rest[2] == "pr":
            return repo_id, validate_revision("/".join(rest[1:4]))
        return repo_id, validate_revision(rest[1])
    raise DownloadError(INVALID_REPO_ID, f"The URL {_shown(url)} does not name a model repository.")


def safe_relpath(filename: object, *, code: str = INTEGRITY) -> str:
    """A repo file path that stays inside a snapshot directory: relative, POSIX, no `..`, no empty parts.

    The paths come from the Hub, so by default a bad one means the repo's listing cannot be trusted."""

    def bad(why: str) -> DownloadError:
        return DownloadError(code, f"Unsafe file path {_shown(filename)} in the repository: {why}.")

    if not isinstance(filename, str) or not filename:
        raise bad("empty")
    if len(filename) > 1024 or "\x00" in filename or not filename.isprintable():
        raise bad("too long or contains control characters")
    if "\\" in filename or re.match(r"[A-Za-z]:", filename):
        raise bad("backslashes and drive letters are not allowed")
    if filename.startswith("/"):
        raise bad("absolute paths are not allowed")
    parts = filename.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise bad("empty, '.' and '..' segments are not allowed")
    return filename


def repo_and_revision(text: object, revision: str | None = None) -> tuple[str, str]:
    """What a user typed as a repository (`org/name` or a Hub URL) and a revision, as (repo_id, revision).

    The one rule the Pull page, the CLI and the API share: a revision named in the URL (…/tree/<rev>) wins
    over no revision (None) or the untouched default `main`; an explicit other revision wins over the
    URL's. The revision is checked as given (an empty one is invalid)."""
    repo_id, url_revision = parse_hub_url(text)  # type: ignore[arg-type]
    if revision is None or (revision == "main" and url_revision != "main"):
        revision = url_revision
    return repo_id, validate_revision(revision)


MAX_PATTERNS = 50
MAX_PATTERN_LENGTH = 200


def validate_allow_patterns(value: object) -> list[str] | None:
    """Glob patterns that select files of a repo, or None for every file. A pattern names files inside the
    repo: relative, no `..`, no drive letters or backslashes (the Hub's paths have none, so such a pattern
    can only be a mistake or a probe)."""
    if value is None or value == [] or value == "":
        return None
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list | tuple) or len(patterns) > MAX_PATTERNS:
        raise DownloadError(
            INVALID_REQUEST, f"allow_patterns must be a list of at most {MAX_PATTERNS} glob patterns."
        )
    checked: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise DownloadError(INVALID_REQUEST, "An allow pattern must be a non-empty string like *.json.")
        pattern = pattern.strip()
        why = ""
        if len(pattern) > MAX_PATTERN_LENGTH or not pattern.isascii() or not pattern.isprintable():
            why = f"at most {MAX_PATTERN_LENGTH} printable ASCII characters"
        elif pattern.startswith("/") or re.match(r"[A-Za-z]:", pattern) or "\\" in pattern:
            why = "absolute paths, drive letters and backslashes are not allowed"
        elif ".." in pattern:
            why = "'..' is not allowed"
        if why:
            raise DownloadError(
                INVALID_REQUEST,
                f"Invalid allow pattern {_shown(pattern)}: {why}.",
                action="Use glob patterns relative to the repository, like *.safetensors or config.json.",
            )
        checked.append(pattern)
    return checked


def unmatched_patterns(patterns: list[str] | None, paths: list[str]) -> list[str]:
    """The patterns that select none of `paths` (huggingface_hub's matching, as the download uses)."""
    from huggingface_hub.utils import filter_repo_objects

    return [p for p in patterns or [] if not list(filter_repo_objects(paths, allow_patterns=[p]))]


def no_match_error(repo_id: str, unmatched: list[str], paths: list[str]) -> DownloadError:
    """A clear refusal for patterns that select nothing, with the repo's file list to pick from."""
    listed = ", ".join(sorted(paths)[:40]) + (f" (and {len(paths) - 40} more)" if len(paths) > 40 else "")
    which = ", ".join(repr(p) for p in unmatched)
    return DownloadError(
        INVALID_REQUEST,
        f"No file of {repo_id} matches {which}. Its files: {listed or 'none'}.",
        action="Fix the patterns (globs like *.safetensors), or leave them empty to pull every file.",
    )
