"""Django for the OpenAI-compatible API (`/v1/`): the same project, URLs and views, with a middleware stack that
never leaves the event loop.

Django runs each hook of a sync middleware (MiddlewareMixin: all of Django's own) around an async view through
`sync_to_async`, one trip to its sync thread per hook. The dashboard's stack made 8 such trips before a
completion's view started and 7 more before its first byte went out: ~2 ms of the way to a fast model's first
token, whose own prefill takes ~5 ms here. The API uses none of what those middlewares do (sessions, CSRF,
login, messages, static files, login lockout): every request carries its API key, which the view checks. It
keeps their Host check and response headers: `ApiHeadersMiddleware` makes the same calls inline, as they do
no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix

from dashboard.csp import ContentSecurityPolicyMiddleware

PREFIX = "/v1/"


class ApiHeadersMiddleware:
    """What the dashboard's middleware does to an API request, in the event loop: the Host check against
    ALLOWED_HOSTS (a 400 otherwise, as CommonMiddleware does: DNS rebinding), the HTTPS redirect when
    SECURE_SSL_REDIRECT asks for it, then the security headers, the CSP and X-Frame-Options."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)
        # Header-only hooks (no I/O, no database), in the order the dashboard's stack applies them.
        self.response_hooks = [
            XFrameOptionsMiddleware(get_response).process_response,
            ContentSecurityPolicyMiddleware(get_response).process_response,
            self.security.process_response,
        ]
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request.get_host()  # raises DisallowedHost: a 400
        response = self.security.process_request(request) or await self.get_response(request)
        for hook in self.response_hooks:
            response = hook(request, response)
        return response


class ApiHandler(ASGIHandler):
    """Django's ASGI handler with ApiHeadersMiddleware as its only middleware (not settings.MIDDLEWARE), and
    no thread made per request.

    Django's handler runs each request in a ThreadSensitiveContext: the request's thread-sensitive sync code
    (the request_started and request_finished receivers, the response's close, a view's plain sync_to_async)
    runs in a thread started for that request and joined at its end. Here it runs in asgiref's one long-lived
    sync thread, as the websocket consumers' database calls already do. Measured in process on this handler
    (a view that answers at once): 0.57 ms of CPU a request with the context, 0.32 without; 0.24 ms from the
    ASGI call to the view, 0.16 without. That thread's database connection is kept (CONN_MAX_AGE) and checked
    by those receivers, where a new thread's was opened for each /v1/models. The completions do their own
    work in the thread pool (`thread_sensitive=False`), so no request's sync code waits behind another's
    generation.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Django 5.2's `ASGIHandler.handle`, but the view does not wait for request_started.

        Its receivers are sync (close_old_connections, reset_queries), so Django awaits a trip to the sync
        thread before it builds the request: 0.3 ms of every completion's first token here (measured between
        the ASGI call and the view). They look after that thread's database connection, and that thread runs
        its jobs one after another, in the order they were handed to it: the receivers are handed over first
        (the task below takes its first step before the view's), so a view's own sync call still runs after
        them. They are awaited once the response is out, so their errors are not lost. The completions enter
        the database in pooled threads that look after their own connection (`database_sync_to_async`)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        # Not Signal.asend: it hands the sync receivers to the thread one task step later, after the view's.
        send_started = sync_to_async(signals.request_started.send)
        started = asyncio.ensure_future(send_started(sender=self.__class__, scope=scope))
        try:
            await self._respond(scope, receive, send, body_file)
        finally:
            await started

    async def _respond(self, scope: dict[str, Any], receive: Any, send: Any, body_file: Any) -> None:
        # From here on as Django's handle.
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        async def process_request(request: HttpRequest, send: Any) -> HttpResponseBase:
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client disconnected during send_response
                await self.send_response(response, send)
            return response

        # The disconnect listener first: it should not raise what would keep process_request from being
        # cancelled.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass  # the client disconnected
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # views may handle their cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()
        body_file.close()

    def load_middleware(self, is_async: bool = False) -> None:
        # Django's load_middleware for a stack of one async middleware that has no view, template-response or
        # exception hooks: the view's errors still become responses (convert_exception_to_response).
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        view = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(ApiHeadersMiddleware(view))


def is_api(scope: dict[str, Any]) -> bool:
    """Whether an HTTP scope is for the API (its path below the app's root path starts with /v1/)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith(PREFIX)
