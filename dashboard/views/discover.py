"""Discover: search the Hub for MLX models, variants side by side, each with its fits-here verdict and a link
to its pull plan (the discover service does the work)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from models_app.services import credentials, discover


@login_required
def discover_page(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")
    sort = request.GET.get("sort", "downloads")
    author = request.GET.get("author", "")
    # A checkbox: absent from a submitted form means unticked; the first visit (no q) starts ticked.
    mlx_only = "q" not in request.GET or request.GET.get("mlx") == "1"
    cursor = request.GET.get("cursor", "")
    page, error, status = None, "", 200
    if "q" in request.GET:  # the form was sent: an empty query lists the top models
        try:
            page = discover.search(
                query,
                sort=sort,
                author=author,
                mlx_only=mlx_only,
                credentials=credentials.search_credentials(request.user),
                cursor=cursor,
                user=request.user,
            )
        except discover.DiscoverError as err:
            error = err.message
            # The page itself works: the form stays, ready for another try.
            status = 503 if err.code == "unavailable" else 400
    return render(
        request,
        "dashboard/discover.html",
        {
            "page": page,
            "error": error,
            "query": query,
            "sort": sort if sort in discover.SORTS else "downloads",
            "author": author,
            "mlx_only": mlx_only,
            "more_url": _more_url(request, page),
            "details_concurrency": settings.DISCOVER_DETAILS_CONCURRENCY,
            "sorts": [
                ("downloads", "Most downloads"),
                ("trending", "Trending"),
                ("recent", "Recently updated"),
                ("likes", "Most likes"),
            ],
        },
        status=status,
    )


def _more_url(request: HttpRequest, page: discover.DiscoverPage | None) -> str:
    """The same search from the page's next cursor ("" when the Hub has no more)."""
    if page is None or not page.next_cursor:
        return ""
    params = {k: v for k, v in request.GET.items() if k != "cursor"}
    return "?" + urlencode({**params, "cursor": page.next_cursor})
