"""Read-only views of a queue: what waits, what waits for its time, what was given up on.

Every listing reads a page at a time (a large queue is never loaded into memory at once) and
skips, with a warning, a stored message it cannot decode.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from vecna_async.connection import AnyRedis, raw, text
from vecna_async.keys import Keys, QueueKeys
from vecna_async.messages import DeadLetter, decode_task
from vecna_async.redis_errors import redis_errors
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import to_signature

log = logging.getLogger("vecna_async.broker")
PAGE = 500


class Listing:
    """Pending, delayed and dead-lettered messages of a queue, read from its keys."""

    def __init__(self, client: AnyRedis, keys: Keys, where: str) -> None:
        self._client = client
        self._keys = keys
        self._where = where

    async def pending(self, queue: str) -> list[Signature]:
        """Waiting tasks: ready (in the order they will be served), then parked (no worker knew
        the task), then held back by their task's limits."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "listing pending tasks"):
            out = await self._signatures_of(q, q.ready)
            for name in sorted(await self._client.smembers(q.parked)):
                out += await self._signatures_of(q, q.parked_prefix + text(name))
            held: list[Any] = await self._client.zrange(q.held_due, 0, -1)
            for name in sorted(text(n) for n in held):
                out += await self._signatures_of(q, q.held_prefix + name)
        return out

    async def parked_counts(self, queue: str) -> dict[str, int]:
        """How many messages of each task name are parked in ``queue``: claimed by workers that
        did not know the name, they wait (PENDING) for a worker of the queue that does."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "counting parked tasks"):
            names = sorted(text(n) for n in await self._client.smembers(q.parked))
            if not names:
                return {}
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(q.parked_prefix + name)
                counts = await pipe.execute()
        return {name: int(n) for name, n in zip(names, counts, strict=True) if n}

    async def delayed(self, queue: str) -> list[Signature]:
        """Tasks waiting for their ETA or retry time, earliest first."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "listing delayed tasks"):
            return await self._signatures_of(q, q.delayed)

    async def _signatures_of(self, q: QueueKeys, zset: str) -> list[Signature]:
        out: list[Signature] = []
        start = 0
        while True:
            ids = [text(i) for i in await self._client.zrange(zset, start, start + PAGE - 1)]
            bodies = await self._fields(q, ids, "b")
            for task_id, (body,) in zip(ids, bodies, strict=True):
                if body is None:
                    continue
                try:
                    out.append(to_signature(decode_task(raw(body))))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("message %s cannot be decoded (%s); not listed", task_id, exc)
            if len(ids) < PAGE:
                return out
            start += PAGE

    async def _fields(self, q: QueueKeys, ids: list[str], *names: str) -> list[list[Any]]:
        """Some fields of each message record, in one round trip."""
        if not ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(q.record(task_id), list(names))
            return list(await pipe.execute())

    async def dead_letters(self, queue: str, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """One page of dead letters, oldest first, each with its reason."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "listing dead letters"):
            entries: list[Any] = await self._client.zrange(
                q.dead, offset, offset + limit - 1, withscores=True
            )
            ids = [text(member) for member, _ in entries]
            fields = await self._fields(q, ids, "b", "e", "d")
        return [
            DeadLetter(task_id, text(reason or b""), int(d or 0), raw(body or b""), int(score))
            for task_id, (_, score), (body, reason, d) in zip(ids, entries, fields, strict=True)
        ]

    async def dead_ids(self, queue: str, limit: int) -> list[str]:
        """The oldest ``limit`` dead-lettered ids."""
        with redis_errors(self._where, "listing dead letters"):
            ids = await self._client.zrange(self._keys.queue(queue).dead, 0, limit - 1)
        return [text(i) for i in ids]

    async def ready_and_dead(self, queue: str) -> tuple[int, int]:
        """How many messages of ``queue`` wait to run (ready) and how many are dead letters: two
        ZCARDs in one round trip, cheap enough for every metrics scrape."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "counting a queue"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zcard(q.ready)
                pipe.zcard(q.dead)
                ready, dead = await pipe.execute()
        return int(ready), int(dead)
