"""Read-only views of a queue: what waits, what waits for its time, what runs, what was given up
on, and one message by id (the inspection API, ``vecna_async.inspection``, reads through these).

Every listing reads a page at a time (a large queue is never loaded into memory at once) and
skips, with a warning, a stored message it cannot decode. Nothing here writes: an operator's
look at a queue must not change it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from vecna_async.connection import AnyRedis, raw, text
from vecna_async.keys import Keys, QueueKeys
from vecna_async.messages import DeadLetter, decode_task
from vecna_async.redis_errors import redis_errors
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import to_signature

log = logging.getLogger("vecna_async.broker")
PAGE = 500


class QueueCounts(NamedTuple):
    """How many messages a queue holds in each place (one ZCARD or so each)."""

    ready: int
    delayed: int
    running: int  # leased to a worker
    dead_letters: int
    parked: int  # claimed by workers that did not know the task: waiting for one that does
    held: int  # held back by their task's concurrency_limit or rate_limit


class Leased(NamedTuple):
    """A message leased to a worker right now."""

    task_id: str
    name: str
    worker: str  # "" when claimed by a release that did not record it
    deadline_ms: int  # when the lease expires unless renewed (epoch ms, Redis's clock)
    claimed_ms: int | None  # when this delivery was claimed (epoch ms, Redis's clock)


class Due(NamedTuple):
    """A message waiting for its ETA or retry time."""

    task_id: str
    name: str
    due_ms: int


class Stored(NamedTuple):
    """One message as its queue holds it, and where (``place``): ready, delayed, running,
    parked, held or dead (``""``: in none of them, e.g. being moved right now)."""

    task_id: str
    name: str
    body: bytes
    deliveries: int
    place: str
    worker: str
    claimed_ms: int | None
    deadline_ms: int | None
    due_ms: int | None
    dead_reason: str
    dead_at_ms: int | None


def _int(value: Any) -> int | None:
    return None if value is None else int(float(value))


def _wall_clock(stored: Any) -> tuple[int, int] | None:
    """The queue's lease clock as stored: (Redis time, lease clock) at its last update."""
    if not stored:
        return None
    real, lease = text(stored).split()
    return int(real), int(lease)


def _lease_wall(deadline: float, clock: tuple[int, int] | None) -> int:
    """A lease deadline on the queue's lease clock (lua/_lib.lua lease_clock) as Redis time: the
    two clocks differ by what they differed by at the clock's last update."""
    if clock is None:
        return int(deadline)
    real, lease = clock
    return int(real + (deadline - lease))


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

    # -- the inspection API's reads -----------------------------------------------------------

    async def known_queues(self) -> set[str]:
        """The known-queues set (``KnownQueues``) read as it is: the previous release's SET
        is read without converting it, so a look never writes."""
        key = self._keys.queues
        with redis_errors(self._where, "listing queues"):
            kind = text(await self._client.type(key))
            members: Any
            if kind == "set":
                members = await self._client.smembers(key)
            else:
                members = await self._client.zrange(key, 0, -1)
        return {text(m) for m in members}

    async def counts(self, queues: Sequence[str]) -> list[QueueCounts]:
        """The counts of each queue, in two round trips whatever the number of queues."""
        keys = [self._keys.queue(queue) for queue in queues]
        if not keys:
            return []
        with redis_errors(self._where, "counting messages"):
            async with self._client.pipeline(transaction=False) as pipe:
                for q in keys:
                    for zset in (q.ready, q.delayed, q.leases, q.dead):
                        pipe.zcard(zset)
                    pipe.smembers(q.parked)
                    pipe.zrange(q.held_due, 0, -1)
                first = await pipe.execute()
            sets: list[tuple[list[str], list[str]]] = []
            async with self._client.pipeline(transaction=False) as pipe:
                for i, q in enumerate(keys):
                    parked = [q.parked_prefix + text(n) for n in first[i * 6 + 4]]
                    held = [q.held_prefix + text(n) for n in first[i * 6 + 5]]
                    for key in (*parked, *held):
                        pipe.zcard(key)
                    sets.append((parked, held))
                sizes = iter(await pipe.execute())
        out = []
        for i, (parked, held) in enumerate(sets):
            ready, delayed, running, dead = (int(n) for n in first[i * 6 : i * 6 + 4])
            n_parked = sum(int(next(sizes)) for _ in parked)
            n_held = sum(int(next(sizes)) for _ in held)
            out.append(QueueCounts(ready, delayed, running, dead, n_parked, n_held))
        return out

    async def running(self, queue: str, offset: int = 0, limit: int = 100) -> list[Leased]:
        """One page of the leased messages, the soonest lease to expire first."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "listing running tasks"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.get(q.clock)
                pipe.zrange(q.leases, offset, offset + limit - 1, withscores=True)
                stored_clock, entries = await pipe.execute()
            ids = [text(member) for member, _ in entries]
            fields = await self._fields(q, ids, "n", "w", "c")
        clock = _wall_clock(stored_clock)
        out = []
        for task_id, (_, deadline), (name, worker, claimed) in zip(
            ids, entries, fields, strict=True
        ):
            if name is not None:  # else settled between the two reads
                wall = _lease_wall(deadline, clock)
                out.append(Leased(task_id, text(name), text(worker or b""), wall, _int(claimed)))
        return out

    async def delayed_page(self, queue: str, offset: int = 0, limit: int = 100) -> list[Due]:
        """One page of the delayed messages (ETA and retries), the earliest due first."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "listing delayed tasks"):
            entries: list[Any] = await self._client.zrange(
                q.delayed, offset, offset + limit - 1, withscores=True
            )
            ids = [text(member) for member, _ in entries]
            names = await self._fields(q, ids, "n")
        return [
            Due(task_id, text(name), int(due))
            for task_id, (_, due), (name,) in zip(ids, entries, names, strict=True)
            if name is not None
        ]

    async def names(self, queue: str, ids: Sequence[str]) -> list[str]:
        """The task name of each message ("" for one that no longer exists)."""
        with redis_errors(self._where, "reading task names"):
            fields = await self._fields(self._keys.queue(queue), list(ids), "n")
        return [text(name or b"") for (name,) in fields]

    async def holding(self, task_id: str, queues: Sequence[str]) -> list[str]:
        """Those of ``queues`` that hold a message with this id, in one round trip."""
        with redis_errors(self._where, "looking for a task"):
            async with self._client.pipeline(transaction=False) as pipe:
                for queue in queues:
                    pipe.exists(self._keys.queue(queue).record(task_id))
                found = await pipe.execute()
        return [queue for queue, n in zip(queues, found, strict=True) if n]

    async def stored(self, queue: str, task_id: str) -> Stored | None:
        """The message ``task_id`` as ``queue`` holds it, or None (finished, or never there)."""
        q = self._keys.queue(queue)
        with redis_errors(self._where, "reading a task"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(q.record(task_id), ["n", "b", "d", "o", "w", "c", "e", "t"])
                for zset in (q.leases, q.delayed, q.ready, q.dead, q.parked_since):
                    pipe.zscore(zset, task_id)
                pipe.get(q.clock)
                record, leased, due, ready, dead, parked, clock = await pipe.execute()
            name, body, d, token, worker, claimed, reason, dead_at = record
            if name is None:
                return None
            held = await self._client.zscore(q.held_prefix + text(name), task_id)
        places = [(leased, "running"), (due, "delayed"), (ready, "ready"), (dead, "dead"),
                  (parked, "parked"), (held, "held")]  # fmt: skip
        place = next((where for score, where in places if score is not None), "")
        running = place == "running" and token is not None
        return Stored(
            task_id=task_id,
            name=text(name),
            body=raw(body or b""),
            deliveries=int(d or 0),
            place=place,
            worker=text(worker or b"") if running else "",
            claimed_ms=_int(claimed) if running else None,
            deadline_ms=_lease_wall(leased, _wall_clock(clock)) if running else None,
            due_ms=_int(due),
            dead_reason=text(reason or b"") if place == "dead" else "",
            dead_at_ms=_int(dead_at) if place == "dead" else None,
        )
