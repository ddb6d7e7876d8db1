"""A send to a client that has gone runs the consumer's disconnect, as the close itself would have.

The ASGI spec lets a server raise an OSError subclass from `send()` once the client is gone, and uvicorn does
(`ClientDisconnected`). That exception leaves Channels' dispatch loop, and the `websocket.disconnect` already
queued behind it is never handled: `disconnect()` never runs. For the chat socket that meant an answer kept
generating to its end for a closed tab (CI saw a walk-out finish 'length'), its request slot held until the
lease expired. A client that closes while a reply is on its way is the common case, not an edge.
"""

from __future__ import annotations

import contextlib
from typing import Any

from channels.exceptions import StopConsumer

# The code a server reports for a connection that ended without a close frame (RFC 6455 §7.1.5).
ABNORMAL_CLOSURE = 1006


class ClientGoneMixin:
    """For AsyncWebsocketConsumer subclasses; list it before the consumer class."""

    _client_gone = False

    async def dispatch(self, message: dict[str, Any]) -> None:
        try:
            await super().dispatch(message)  # type: ignore[misc]
        except OSError:
            if self._client_gone or message.get("type") == "websocket.disconnect":
                raise
            self._client_gone = True
            with contextlib.suppress(StopConsumer):  # the handler ends with it; ours says the same below
                await self.websocket_disconnect({"type": "websocket.disconnect", "code": ABNORMAL_CLOSURE})  # type: ignore[attr-defined]
            raise StopConsumer from None
