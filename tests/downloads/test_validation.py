"""Repo ids, revisions, Hub URLs and repo file paths: what passes, what is refused, with which code."""

from __future__ import annotations

import pytest

from models_app.services.errors import DownloadError
from models_app.services.validation import parse_hub_url, safe_relpath, validate_repo_id, validate_revision


@pytest.mark.parametrize(
    "repo_id",
    ["mlx-community/SmolLM2-135M-Instruct-8bit", "a/b", "Org_1/model.v2", "x" * 96 + "/" + "y" * 96],
)
def test_it_accepts_good_repo_ids(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    [
        None,
        42,
        "",
        " ",
        "name",
        "a/b/c",
        "../x",
        "a/..",
        "./a",
        "a/.b",
        "a/b-",
        "-a/b",
        "a/b.",
        "a/b..c",
        "a/b--c",
        "a/b.git",
        "a/" + "b" * 97,
        "x" * 10_000,
        "a/b\x00",
        "a/b\n",
        "a /b",
        "a/b c",
        "a\\b",
        "\u043erg/name",  # Cyrillic o
        "org/n\u0430me",  # Cyrillic a
        "org/\uff4e\uff41\uff4d\uff45",  # fullwidth
        "org/name\u200b",
        "org/🙂",
        "/a",
        "a/",
    ],
)
def test_it_refuses_bad_repo_ids(repo_id: object) -> None:
    with pytest.raises(DownloadError) as caught:
        validate_repo_id(repo_id)
    assert caught.value.code == "invalid_repo_id"
    assert len(caught.value.message) < 300
    assert not caught.value.retryable


@pytest.mark.parametrize(
    "revision",
    ["main", "v1.0", "v1.0-rc.1", "feature/new_thing", "refs/pr/12", "a" * 40, "0123abcd" * 5, "dev+1"],
)
def test_it_accepts_good_revisions(revision: str) -> None:
    assert validate_revision(revision) == revision


@pytest.mark.parametrize(
    "revision",
    [
        "",
        None,
        "..",
        "../main",
        "a/../b",
        "a..b",
        "/main",
        "main/",
        "a//b",
        ".hidden",
        "a/.b",
        "x.lock",
        "main\x00",
        "main\n",
        "a b",
        "brånch",
        "x" * 201,
        "refs/pr/abc",
        "refs/pr/0",
        "a~1",
        "a^",
        "a:b",
        "a*",
        "a?",
        "a[",
        "@{u}",
        "-main",
        "main.",
    ],
)
def test_it_refuses_bad_revisions(revision: object) -> None:
    with pytest.raises(DownloadError) as caught:
        validate_revision(revision)
    assert caught.value.code == "invalid_revision"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://huggingface.co/mlx-community/Qwen3-4B-4bit", ("mlx-community/Qwen3-4B-4bit", "main")),
        ("https://huggingface.co/org/name/", ("org/name", "main")),
        ("https://huggingface.co/org/name/tree/v1.0", ("org/name", "v1.0")),
        ("https://huggingface.co/org/name/tree/refs%2Fpr%2F3", ("org/name", "refs/pr/3")),
        ("https://huggingface.co/org/name/tree/refs/pr/3", ("org/name", "refs/pr/3")),
        ("https://huggingface.co/org/name/blob/main/config.json", ("org/name", "main")),
        ("https://hf.co/org/name", ("org/name", "main")),
        ("  org/name ", ("org/name", "main")),
    ],
)
def test_it_parses_hub_urls(url: str, expected: tuple[str, str]) -> None:
    assert parse_hub_url(url) == expected


def test_it_accepts_urls_of_the_configured_endpoint(settings) -> None:
    settings.HF_ENDPOINT = "http://127.0.0.1:9999"
    assert parse_hub_url("http://127.0.0.1:9999/org/name/tree/dev") == ("org/name", "dev")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://evil.example/org/name", "invalid_repo_id"),
        ("ftp://huggingface.co/org/name", "invalid_repo_id"),
        ("https://huggingface.co/org", "invalid_repo_id"),
        ("https://huggingface.co/org/name/discussions/4", "invalid_repo_id"),
        ("https://huggingface.co/org/../name", "invalid_repo_id"),
        ("https://huggingface.co/org/name/tree/..%2F..", "invalid_revision"),
        ("https://huggingface.co/" + "a" * 3000, "invalid_repo_id"),
    ],
)
def test_it_refuses_other_urls(url: str, code: str) -> None:
    with pytest.raises(DownloadError) as caught:
        parse_hub_url(url)
    assert caught.value.code == code


@pytest.mark.parametrize("path", ["config.json", "sub/dir/model.safetensors", ".gitattributes", "a..b/c"])
def test_safe_relpath_accepts_repo_paths(path: str) -> None:
    assert safe_relpath(path) == path


@pytest.mark.parametrize(
    "path",
    ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "C:\\x", "c:/x", "a\\b", "a\x00b", None],
)
def test_safe_relpath_refuses_paths_that_leave_the_snapshot(path: object) -> None:
    with pytest.raises(DownloadError) as caught:
        safe_relpath(path)
    assert caught.value.code == "integrity"
    with pytest.raises(DownloadError) as caught:
        safe_relpath(path, code="invalid_request")
    assert caught.value.code == "invalid_request"
