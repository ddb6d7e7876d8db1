"""Every page renders for a logged-in user, redirects anonymous users to the login page, and costs the same
number of SQL queries with 10 rows as with 300."""

from __future__ import annotations

import pytest

from tests.factories import make_snapshot
from tests.pages.conftest import count_queries

PAGES = [
    "/",
    "/models/",
    "/pull/",
    "/discover/",
    "/downloads/",
    "/cache/",
    "/usage/",
    "/settings/",
    "/health/",
]
LISTS = [
    "/",
    "/models/",
    "/models/?sort=size&status=ready",
    "/models/?q=model&updates=on",
    "/downloads/",
    "/cache/",
    "/usage/?days=30",
    "/settings/",
]


@pytest.mark.parametrize("url", PAGES)
def test_it_renders_for_a_logged_in_user(alice_client, url: str) -> None:
    response = alice_client.get(url)
    assert response.status_code == 200
    assert b'aria-current="page"' in response.content  # the nav marks where we are


@pytest.mark.parametrize("url", [*PAGES, "/models/1/", "/models/1/delete/", "/settings/keys/new/"])
def test_it_redirects_anonymous_users_to_login(client, db, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize(
    "url",
    [
        "/models/1/verify/",
        "/models/1/update/",
        "/models/1/load/",
        "/downloads/1/cancel/",
        "/downloads/1/retry/",
        "/settings/keys/",
    ],
)
def test_actions_refuse_anonymous_posts(client, db, url: str) -> None:
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_nav_has_every_section(alice_client) -> None:
    html = alice_client.get("/").content.decode()
    for label in (
        "Overview",
        "Models",
        "Discover",
        "Pull",
        "Downloads",
        "Cache",
        "Usage",
        "Chat",
        "Settings",
        "Health",
    ):
        assert f">{label}</a>" in html
    assert html.count(">Chat</a>") >= 1


@pytest.mark.parametrize("url", LISTS)
@pytest.mark.parametrize("who", ["alice", "staff"])
def test_query_count_does_not_grow_with_rows(
    client, request, populate, django_assert_max_num_queries, url: str, who: str
) -> None:
    user = request.getfixturevalue(who)
    client.force_login(user)
    populate(10, user=user)
    small = count_queries(client, url)
    populate(290, user=user, tag="more")
    with django_assert_max_num_queries(small):
        response = client.get(url)
    assert response.status_code == 200


def test_model_page_query_count_does_not_grow_with_usage_or_revisions(
    alice_client, alice, populate, django_assert_max_num_queries
) -> None:
    from models_app.models import Usage

    snap = make_snapshot("org/detail-model", owner=alice)
    url = f"/models/{snap.id}/"
    Usage.objects.bulk_create(
        Usage(user=alice, snapshot=snap, source="browser", completion_tokens=5) for _ in range(10)
    )
    small = count_queries(alice_client, url)
    Usage.objects.bulk_create(
        Usage(user=alice, snapshot=snap, source="api", completion_tokens=5) for _ in range(300)
    )
    for i in range(30):
        make_snapshot("org/detail-model", owner=alice, ref=f"v{i}")
    with django_assert_max_num_queries(small):
        assert alice_client.get(url).status_code == 200


@pytest.mark.parametrize("url", PAGES)
def test_ids_are_unique_and_inputs_are_labelled(client, staff, populate, url: str) -> None:
    """Keyboard and screen-reader basics: no duplicate ids, and every visible input has a label."""
    import re

    client.force_login(staff)
    populate(3, user=staff)
    html = client.get(url).content.decode()
    html = re.sub(r"<template.*?</template>", "", html, flags=re.S)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html):
        if 'type="hidden"' in tag:
            continue
        field_id = re.search(r'\bid="([^"]+)"', tag)
        assert field_id, tag
        assert f'for="{field_id.group(1)}"' in html, tag
