"""Sockets belong to the login session that opened them: logging out closes them.

Channels authenticates a socket once, at the handshake, so without this a socket opened before logout stayed
authenticated for as long as it stayed open. Each socket joins its session's group (models_app.realtime
.session_group); Django's `user_logged_out` signal sends `session.ended` to it, and every socket of that session
(every tab, chat and downloads alike) closes with 4401, which the pages read as "log in again". Other sessions
of the same user are not touched.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from models_app.realtime import end_session, session_group

UNAUTHENTICATED = 4401


class SessionBoundMixin:
    """For AsyncWebsocketConsumer subclasses: `join_session()` after accepting, `leave_session()` on disconnect."""

    session_group_name: str | None = None

    async def join_session(self) -> bool:
        """Join the session's group; False (and the socket closed) when the session ended meanwhile."""
        session = self.scope.get("session")  # type: ignore[attr-defined]
        key = getattr(session, "session_key", None)
        if not key:
            await self.close(code=UNAUTHENTICATED)  # type: ignore[attr-defined]
            return False
        self.session_group_name = session_group(key)
        await self.channel_layer.group_add(self.session_group_name, self.channel_name)  # type: ignore[attr-defined]
        # A logout between the handshake's authentication and the join above sent its message to nobody.
        if not await database_sync_to_async(session.exists)(key):
            await self.close(code=UNAUTHENTICATED)  # type: ignore[attr-defined]
            return False
        return True

    async def leave_session(self) -> None:
        if self.session_group_name is not None:
            await self.channel_layer.group_discard(self.session_group_name, self.channel_name)  # type: ignore[attr-defined]

    async def session_ended(self, event: dict[str, Any]) -> None:
        await self.close(code=UNAUTHENTICATED)  # type: ignore[attr-defined]


@receiver(user_logged_out, dispatch_uid="dashboard.close_session_sockets")
def close_session_sockets(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """Sent by django.contrib.auth.logout before it flushes the session, so the key is still the old one."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        end_session(key)
