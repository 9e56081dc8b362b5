"""The Redis result backend.

When the backend is the broker's Redis (the default), workers write states inside the broker's
scripts, fenced by the lease token and published in one message per batch; this class then only
reads. With a separate ``result_backend``, workers call ``store`` after each settle.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from vecna_async.backend.base import StateWrite
from vecna_async.broker.redis import unavailable_as
from vecna_async.connection import RedisClients, raw
from vecna_async.keys import Keys
from vecna_async.messages import TaskState, decode_state
from vecna_async.scripts import script


class RedisBackend:
    """States under ``<prefix>:{queue}:s:<id>``, with a TTL of ``results_expire_in``."""

    def __init__(
        self, clients: RedisClients, keys: Keys, ttl: int, reply_channel: str, shares_broker: bool
    ) -> None:
        self.client = clients.main
        self.reply_channel = reply_channel
        self._where = clients.target.describe()
        self._keys = keys
        self._ttl = ttl
        self._shares_broker = shares_broker

    async def get_state(self, queue: str, task_id: str) -> TaskState | None:
        async with unavailable_as(self._where):
            if self._shares_broker:  # PENDING/RECEIVED are derived from the message record
                packed = self._keys.packed_queue(queue)
                args = [packed, self._keys.sched_channel, task_id]
                stored = await script("state")(self.client, [self._keys.queue(queue).ready], args)
            else:
                stored = await self.client.get(self._keys.queue(queue).state(task_id))
        return decode_state(raw(stored)) if stored else None

    async def watch(self, queue: str, task_id: str) -> TaskState | None:
        if not self._shares_broker:
            return await self.get_state(queue, task_id)
        args = [
            self._keys.packed_queue(queue),
            self._keys.sched_channel,
            task_id,
            self.reply_channel,
        ]
        async with unavailable_as(self._where):
            stored = await script("watch")(self.client, [self._keys.queue(queue).ready], args)
        return decode_state(raw(stored)) if stored else None

    async def store(self, writes: Sequence[StateWrite]) -> None:
        if not writes:
            return
        replies: dict[str, list[bytes]] = defaultdict(list)
        async with unavailable_as(self._where), self.client.pipeline(transaction=False) as pipe:
            for w in writes:
                key = self._keys.queue(w.queue).state(w.task_id)
                pipe.set(key, w.state, ex=self._ttl, nx=w.if_absent)
                if w.reply_to:
                    replies[w.reply_to].append(w.task_id.encode() + b"\t" + w.state + b"\n")
            for channel, lines in replies.items():
                pipe.publish(channel, b"".join(lines))
            await pipe.execute()
