"""WhiteNoise, able to run in the ASGI handler's event loop.

WhiteNoise's middleware is sync-only. One sync-only middleware in the list makes Django adapt the whole chain
around it: every request (an SSE stream of the OpenAI API, a REST call) was handed to Django's one sync thread
to pass WhiteNoise, then back to the event loop for the view, and back again for the response. That cost two
thread switches per request and queued concurrent requests behind each other on that one thread. This subclass
does the same lookup in either mode: a static file is served at once (its response streams the file as
WhiteNoise's does), anything else goes on in the mode the handler runs in.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        static_file = self._static_file(request.path_info)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)

    def _static_file(self, path: str) -> Any:
        return self.find_file(path) if self.autorefresh else self.files.get(path)
