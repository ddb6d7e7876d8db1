"""channels_redis's layer, with a send that costs one Redis round trip instead of four, and a receive that
costs one or two instead of four.

Send: `RedisChannelLayer.send` drops expired messages, counts the channel against its capacity, adds the
message and renews the key's expiry: four commands, each awaited in turn. Every chat.delta of every stream
pays them, on the inference worker's sender thread and before the first token reaches the page. The same four
commands run here as one script, atomically, with the same outcome: ChannelFull at capacity, the message
otherwise.

Receive: every reply to every request of a web process arrives on one Redis key (the process's channel, which
no other process reads), and channels_redis reads each message with four commands in turn: a script that
moves the backup queue back, a BZPOPMIN, a ZADD of the message to the backup queue, then (in a task the next
receive waits for) a ZPOPMIN that takes it out again. The backup keeps a message whose reader was cancelled
while Redis answered it. Here:
- a message already waiting comes in one script: the backup moved back, the message popped and backed up. The
  message handed over last is taken out of the backup by the next receive's script (it is known in this
  process), so no cleaner task runs and the next receive waits for none;
- when the channel is empty, a BZPOPMIN waits, as before; its message is handed over with no await in
  between, so no cancellation can come between the pop and the reader, and it needs no backup. (channels_redis
  awaits the ZADD there: a cancellation during that await was the one its backup caught.)
Messages keep their order; a message popped by a script whose answer a cancellation lost is delivered by the
next receive, as channels_redis delivers its backup.
"""

from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as _RedisChannelLayer

_SEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: the channel, its backup queue. ARGV: the message handed over last (its backup entry; '' for none), the
# backup's expiry. Returns the oldest message (now backed up), or false when the channel is empty.
_RECEIVE = """
if ARGV[1] ~= '' then
    redis.call('ZREM', KEYS[2], ARGV[1])
end
local backed_up = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = #backed_up, 1, -2 do
    redis.call('ZADD', KEYS[1], backed_up[i], backed_up[i - 1])
end
redis.call('DEL', KEYS[2])
local popped = redis.call('ZPOPMIN', KEYS[1])
if popped[1] == nil then
    return false
end
redis.call('ZADD', KEYS[2], popped[2], popped[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return popped[1]
"""


class RedisChannelLayer(_RedisChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # By channel key: the backup entry of the message its last receive handed over (see _RECEIVE).
        self._handed_over: dict[str, bytes] = {}

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        # As channels_redis: a process-local channel carries its full name inside the message.
        channel_non_local_name = channel
        if "!" in channel:
            message = {**message, "__asgi_channel__": channel}
            channel_non_local_name = self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        now = time.time()
        added = await self.connection(index).eval(
            _SEND,
            1,
            self.prefix + channel_non_local_name,
            int(now) - int(self.expiry),
            self.get_capacity(channel),
            now,
            self.serialize(message),
            int(self.expiry),
        )
        if not added:
            raise ChannelFull()

    async def receive_single(self, channel: str) -> tuple[str, dict[str, Any]]:
        if "!" not in channel:
            # A general channel may have readers in several processes: one of them could move back the entry
            # another has handed over. Only this process reads its own channel, so only that one is read here.
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        assert channel.endswith("!")
        index = self.consistent_hash(channel)
        channel_key = self.prefix + channel
        connection = self.connection(index)
        # One receive per key at a time in this process: each script must see the last one's hand-over.
        await self.receive_clean_locks.acquire(channel_key)
        try:
            content = await connection.eval(
                _RECEIVE,
                2,
                channel_key,
                self._backup_channel_name(channel_key),
                self._handed_over.get(channel_key, b""),
                int(self.expiry),
            )
            # Only now that the script ran (a cancelled call leaves the entry to the next one to take out).
            if content:
                self._handed_over[channel_key] = content
            else:
                self._handed_over.pop(channel_key, None)
            while not content:
                popped = await connection.bzpopmin(channel_key, timeout=self.brpop_timeout)
                if popped is not None:
                    content = popped[1]
        finally:
            self.receive_clean_locks.release(channel_key)
        message = self.deserialize(content)
        # As channels_redis: a process-local channel's full name travels inside the message.
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message
