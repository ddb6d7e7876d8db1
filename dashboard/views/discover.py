"""Discover: search the Hub for MLX models, variants side by side, each with its fits-here verdict and a link
to its pull plan (the discover service does the work)."""

from __future__ import annotations

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
    page, error, status = None, "", 200
    if "q" in request.GET:  # the form was sent: an empty query lists the top models
        try:
            page = discover.search(
                query,
                sort=sort,
                author=author,
                mlx_only=mlx_only,
                credential=credentials.default_credential(request.user),
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
            "sorts": [
                ("downloads", "Most downloads"),
                ("trending", "Trending"),
                ("recent", "Recently updated"),
                ("likes", "Most likes"),
            ],
        },
        status=status,
    )
