"""The Redis result backend.

When the backend is the broker's Redis (the default), workers write states inside the broker's
scripts, fenced by the lease token and published in one message per batch; this class then only
reads, and ``watch`` adds the waiter's channel to the message record's reply channels. With a
separate ``result_backend``, workers call ``store`` after each settle, and ``watch`` registers the
channel in the task's watchers set on the backend (``lua/backend_watch.lua``), which ``store``
publishes to (``lua/backend_store.lua``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from vecna_async.backend.base import MAX_WATCHERS, StateWrite
from vecna_async.broker.redis import unavailable_as
from vecna_async.connection import AnyRedis, RedisClients, raw
from vecna_async.keys import Keys
from vecna_async.messages import TaskState, decode_state
from vecna_async.scripts import script


class RedisBrokerStates:
    """Reads a task's state as the broker's Redis sees it (``lua/state.lua``): the stored state
    when states live there, else PENDING or RECEIVED from the message record, or None."""

    def __init__(self, client: AnyRedis, keys: Keys, where: str) -> None:
        self._client = client
        self._keys = keys
        self._where = where

    async def current_state(self, queue: str, task_id: str) -> TaskState | None:
        args = [self._keys.packed_queue(queue), self._keys.sched_channel, task_id]
        async with unavailable_as(self._where):
            stored = await script("state")(self._client, [self._keys.queue(queue).ready], args)
        return decode_state(raw(stored)) if stored else None


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
        # PENDING/RECEIVED are derived from the message record when states live with it
        self._derived = RedisBrokerStates(self.client, keys, self._where) if shares_broker else None

    async def get_state(self, queue: str, task_id: str) -> TaskState | None:
        if self._derived is not None:
            return await self._derived.current_state(queue, task_id)
        async with unavailable_as(self._where):
            stored = await self.client.get(self._keys.queue(queue).state(task_id))
        return decode_state(raw(stored)) if stored else None

    async def watch(self, queue: str, task_id: str) -> TaskState | None:
        q = self._keys.queue(queue)
        async with unavailable_as(self._where):
            if self._shares_broker:
                packed = self._keys.packed_queue(queue)
                args = [packed, self._keys.sched_channel, task_id, self.reply_channel, MAX_WATCHERS]
                stored = await script("watch")(self.client, [q.ready], args)
            else:
                keys = [q.state(task_id), q.watchers(task_id)]
                argv = [self.reply_channel, MAX_WATCHERS, self._ttl]
                stored = await script("backend_watch")(self.client, keys, argv)
        return decode_state(raw(stored)) if stored else None

    async def store(self, writes: Sequence[StateWrite]) -> None:
        """One script call per queue (a queue's keys share a Cluster slot); see
        ``lua/backend_store.lua`` for why a concurrent ``watch`` is never missed."""
        by_queue: dict[str, list[bytes | str]] = defaultdict(list)
        for w in writes:
            mode = "nx" if w.if_absent else "nf" if w.unless_final else "set"
            by_queue[w.queue] += [w.task_id, w.state, w.reply_to, mode]
        async with unavailable_as(self._where):
            for queue, fields in by_queue.items():
                q = self._keys.queue(queue)
                route = q.state_prefix  # any key of the queue's slot: the script builds its keys
                args = [q.state_prefix, q.watchers_prefix, self._ttl, *fields]
                await script("backend_store")(self.client, [route], args)

    async def report_progress(self, queue: str, task_id: str, value: bytes, reply_to: str) -> None:
        """Store ``value`` (JSON) as the task's latest progress and push it to its waiters."""
        q = self._keys.queue(queue)
        async with unavailable_as(self._where, "reporting progress"):
            if self._shares_broker:
                args = [self._keys.packed_queue(queue), self._keys.sched_channel, task_id]
                await script("progress")(self.client, [q.ready], [*args, value, self._ttl])
            else:
                keys = [q.progress(task_id), q.watchers(task_id)]
                argv = [task_id, value, self._ttl, reply_to]
                await script("backend_progress")(self.client, keys, argv)

    async def get_progress(self, queue: str, task_id: str) -> bytes | None:
        """The task's latest reported progress (JSON), or None."""
        async with unavailable_as(self._where, "reading progress"):
            stored = await self.client.get(self._keys.queue(queue).progress(task_id))
        return raw(stored) if stored is not None else None
