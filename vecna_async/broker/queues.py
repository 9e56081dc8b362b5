"""The set of queues that have (or had) delayed entries, so every scheduler promotes them.

A sorted set ``queue -> when a delayed entry was last added``: a process refreshes its queues'
entries at most once per ``QUEUE_REMEMBER_SECONDS`` (workers their own queue at start, senders
a queue they send a delayed message to), and schedulers prune an entry not refreshed for a day
whose delayed set is empty, so the set does not grow with every queue name ever used. The
previous release kept a plain SET there; it is converted on first use.
"""

from __future__ import annotations

import time
from typing import Any

from vecna_async.connection import AnyRedis, text
from vecna_async.keys import Keys
from vecna_async.redis_errors import redis_errors
from vecna_async.scripts import script

QUEUE_REMEMBER_SECONDS = 3600
QUEUE_IDLE_SECONDS = 86_400


class KnownQueues:
    """The known-queues set of one Redis (``Keys.queues``)."""

    def __init__(self, client: AnyRedis, keys: Keys, where: str) -> None:
        self._client = client
        self._keys = keys
        self._key = keys.queues
        self._where = where
        self._remembered: dict[str, float] = {}
        self._converted = False

    async def _convert(self) -> None:
        if not self._converted:
            await script("queues_convert")(self._client, [self._key], [int(time.time() * 1000)])
            self._converted = True

    async def remember(self, queue: str) -> None:
        """Make sure schedulers promote ``queue`` (cheap: one write per queue per hour)."""
        now = time.monotonic()
        if now - self._remembered.get(queue, -QUEUE_REMEMBER_SECONDS) < QUEUE_REMEMBER_SECONDS:
            return
        with redis_errors(self._where, "recording a queue"):
            await self._convert()
            await self._client.zadd(self._key, {queue: int(time.time() * 1000)})
        self._remembered[queue] = now

    async def all(self) -> set[str]:
        with redis_errors(self._where, "listing queues"):
            await self._convert()
            members = await self._client.zrange(self._key, 0, -1)
        return {text(m) for m in members}

    async def prune(self) -> list[str]:
        """Forget queues idle for a day whose delayed set is empty. An entry refreshed
        meanwhile is kept (compare-and-delete)."""
        cutoff = int(time.time() * 1000) - QUEUE_IDLE_SECONDS * 1000
        forgotten = []
        with redis_errors(self._where, "pruning queues"):
            await self._convert()
            stale: Any = await self._client.zrangebyscore(
                self._key, "-inf", cutoff, withscores=True
            )
            for member, score in stale:
                queue = text(member)
                if await self._client.zcard(self._keys.queue(queue).delayed) == 0:
                    args = [queue, repr(float(score))]
                    if await script("queues_forget")(self._client, [self._key], args):
                        forgotten.append(queue)
        return forgotten
