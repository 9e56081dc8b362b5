"""The Redis broker: every queue operation is one Lua script call (see ``vecna_async/lua/``)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import msgspec.msgpack
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vecna_async.backend.base import Backend, StateWrite
from vecna_async.broker.base import (
    ChordFailure,
    ChordSuccess,
    Claimed,
    Done,
    Promoted,
    SettleBatch,
)
from vecna_async.broker.coalesce import Coalescer
from vecna_async.config import Config
from vecna_async.connection import PinnedConnection, RedisClients, raw, text
from vecna_async.exceptions import BrokerUnavailable
from vecna_async.keys import Keys, QueueKeys
from vecna_async.messages import DeadLetter, State, TaskState, decode_task, encode
from vecna_async.scripts import script
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import Outgoing, to_signature

log = logging.getLogger("vecna_async.broker")

msgpack_encode = msgspec.msgpack.Encoder().encode

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors that mean Redis cannot be reached right now (as opposed to a bug or a bad reply)."""


@asynccontextmanager
async def unavailable_as(where: str) -> AsyncIterator[None]:
    """Re-raise a connection failure as BrokerUnavailable that says where."""
    try:
        yield
    except REDIS_DOWN as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc


def _packed(fields: list[Any]) -> bytes:
    """Many script arguments as one msgpack array: redis-py packs each argument in Python, ~1 us
    apiece, ~10 per task. Redis's Lua msgpack reads strings, not binary, so bytes (JSON bodies
    and states, always UTF-8) go as str."""
    return msgpack_encode([f.decode() if type(f) is bytes else f for f in fields])


def _message_args(m: Outgoing, write: str) -> list[Any]:
    """A message as the Lua ``enqueue`` takes it (lua/_lib.lua); ``write`` is "1" when the
    states live on this Redis."""
    return [
        m.id, m.name, m.body, m.priority, m.due_ms, int(m.ignore_unregistered), m.reply_to, write,
    ]  # fmt: skip


def _chord_args(
    chord: ChordSuccess | ChordFailure | None, qi: Callable[[str], int], write_states: bool
) -> list[Any]:
    if chord is None:
        return ["-"]
    if isinstance(chord, ChordFailure):
        cb = chord.callback
        return ["F", chord.fired_key, qi(cb.queue), cb.task_id, cb.state, cb.reply_to]
    m = chord.callback
    return [
        "S", chord.group_key, chord.fired_key, chord.index, chord.count, chord.results,
        qi(m.queue), m.id, m.name, chord.body_prefix, chord.body_suffix, m.priority, m.due_ms,
        int(m.ignore_unregistered), m.reply_to, "1" if write_states else "",
    ]  # fmt: skip


class RedisBroker:
    """Queues in Redis with at-least-once delivery (leases, fencing tokens, dead letters)."""

    def __init__(
        self, clients: RedisClients, keys: Keys, config: Config, state_store: Backend | None
    ):
        """``state_store`` is the result backend when it is another Redis than this one: the
        broker's scripts cannot write states there, so the broker mirrors the states it would
        have written (PENDING at send, CANCELED at cancel) through it."""
        write_states = state_store is None
        self._store = state_store
        self._main = clients.main
        self.where = clients.target.describe()
        self._keys = keys
        self._config = config
        self._write_states = write_states
        self._flag = "1" if write_states else "0"
        self._flag_str = "1" if write_states else ""
        r = config.redis
        # How long redis-py may still resend a call (each attempt can wait a read timeout): the
        # life of the request ids that make a resent enqueue or claim a no-op.
        self._resend_window = int((r.retries + 1) * (r.read_timeout + 0.5)) + 1
        self._ttl = config.results_expire_in
        self._known_delayed_queues: set[str] = set()
        self._coalescer = Coalescer(self._enqueue)
        # One connection each for the hot callers (see PinnedConnection).
        self._send_conn = PinnedConnection(clients.main)
        self._claim_conn = PinnedConnection(clients.main)
        self._settle_conn = PinnedConnection(clients.main)
        self._wait_conn = PinnedConnection(clients.blocking)  # the consumer's idle wait

    def _q(self, queue: str) -> QueueKeys:
        return self._keys.queue(queue)

    async def _script(
        self, name: str, queue: str, args: list[Any], via: PinnedConnection | None = None
    ) -> Any:
        """Run a queue script: KEYS is one key of the queue (Cluster routes on it), ARGV starts
        with the queue's packed keys and the scheduler channel. ``via`` a pinned connection
        for the hot paths (claim, settle, send)."""
        packed = self._keys.packed_queue(queue)
        argv = [packed, self._keys.sched_channel, *args]
        return await script(name)(via or self._main, [self._q(queue).ready], argv)

    async def publish(
        self, messages: Sequence[Outgoing], request_id: str = "", request_ttl: int = 0
    ) -> None:
        if request_id:  # its own call: the request id is what deduplicates it
            await self._enqueue(messages, request_id, request_ttl)
        else:
            await self._coalescer.publish(messages)

    async def _enqueue(
        self, messages: Sequence[Outgoing], request_id: str = "", request_ttl: int = 0
    ) -> None:
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        for m in messages:
            by_queue[m.queue].append(m)
        request_id = request_id or uuid.uuid4().hex
        if self._store is not None:  # first: written after, it could overwrite a fast result
            await self._store.store([StateWrite(m.queue, m.id, m.pending_state) for m in messages])
        async with unavailable_as(self.where):
            for queue, batch in by_queue.items():
                fields: list[Any] = []
                for m in batch:
                    fields += _message_args(m, self._flag_str)
                args = [request_id, request_ttl or self._resend_window, self._ttl, _packed(fields)]
                await self._script("enqueue", queue, args, self._send_conn)
                if queue not in self._known_delayed_queues and any(m.due_ms for m in batch):
                    await self.remember_queue(queue)

    async def close(self) -> None:
        """Give the pinned connections back to the pool (before the pool closes)."""
        for conn in (self._send_conn, self._claim_conn, self._settle_conn, self._wait_conn):
            await conn.close()

    async def remember_queue(self, queue: str) -> None:
        """Record that ``queue`` has a delayed set, so every scheduler looks at it."""
        await self._main.sadd(self._keys.queues, queue)
        self._known_delayed_queues.add(queue)

    async def known_queues(self) -> set[str]:
        members = await self._main.smembers(self._keys.queues)
        return {text(m) for m in members}

    async def claim(
        self, queue: str, max_n: int, task_names: Sequence[str], session: str = ""
    ) -> list[Claimed]:
        r = self._config.redis
        token = uuid.uuid4().hex[:20]
        # an idle registration must outlive the worker's wait between two claims
        idle_ttl = 2 * r.normal_tasks_poll_period + int(r.read_timeout * 1000)
        args = [
            token, uuid.uuid4().hex, max_n, int(r.lease_timeout * 1000),
            r.max_deliveries, self._flag, self._ttl, max(100, max_n), session, idle_ttl,
            self._resend_window,
            *task_names,
        ]  # fmt: skip
        async with unavailable_as(self.where):
            flat = await self._script("claim", queue, args, self._claim_conn)
        out = []
        for i in range(0, len(flat), 5):
            flag = text(flat[i + 3])
            dead = flag[5:] if flag.startswith("dead:") else None
            out.append(
                Claimed(queue, text(flat[i]), raw(flat[i + 1]), int(flat[i + 2]),
                        text(flat[i + 4]) or token, flag == "unregistered", dead)
            )  # fmt: skip
        return out

    async def settle(self, batch: SettleBatch) -> list[str]:
        others: dict[str, int] = {}

        def qi(queue: str) -> int:
            return 0 if queue == batch.queue else others.setdefault(queue, len(others) + 1)

        def after(d: Done) -> list[Any]:
            out: list[Any] = [len(d.follow_ups)]
            for m in d.follow_ups:
                out += [qi(m.queue), *_message_args(m, self._flag_str)]
            out.append(len(d.extra_states))
            for x in d.extra_states:
                out += [qi(x.queue), x.task_id, x.state, x.reply_to]
            return out + _chord_args(d.chord, qi, self._write_states)

        entries: list[Any] = []
        for task_id, token in batch.started:
            entries += ["S", task_id, token]
        for d in batch.done:
            entries += ["D", d.task_id, d.token, d.state, *after(d)]
        for d in batch.aftermath:
            entries += ["K", d.task_id, d.state, *after(d)]
        for task_id, token, state, body, due_ms in batch.retry:
            entries += ["R", task_id, token, state, body, due_ms]
        for task_id, token, reason, state in batch.dead:
            entries += ["X", task_id, token, reason, state]
        for task_id, token in batch.release:
            entries += ["L", task_id, token]
        for task_id, token, name in batch.park:
            entries += ["P", task_id, token, name]
        other_args: list[Any] = []
        for name in others:  # insertion order matches the indexes handed out above
            other_args.append(self._keys.packed_queue(name))
        args = [
            self._flag, self._ttl, len(others), *other_args,
            _packed(entries),
        ]  # fmt: skip
        async with unavailable_as(self.where):
            lost = await self._script("settle", batch.queue, args, self._settle_conn)
            for name in others:
                if name not in self._known_delayed_queues:
                    await self.remember_queue(name)
        return [text(x) for x in lost]

    async def extend_leases(self, queue: str, leases: Sequence[tuple[str, str]]) -> list[str]:
        args: list[Any] = [int(self._config.redis.lease_timeout * 1000)]
        for task_id, token in leases:
            args += [task_id, token]
        async with unavailable_as(self.where):
            lost = await self._script("heartbeat", queue, args)
        return [text(x) for x in lost]

    async def wait_for_work(
        self, queue: str, timeout: float, session: str = "", max_n: int = 1
    ) -> list[Claimed]:
        q = self._q(queue)
        inbox = q.inbox_prefix + session
        keys = [inbox, q.wake] if session else [q.wake]  # the inbox first: BLMPOP reads in order
        async with unavailable_as(self.where):
            popped: Any = await self._wait_conn.execute(
                "BLMPOP", timeout, len(keys), *keys, "LEFT", "COUNT", max(1, max_n)
            )
        if not popped or text(popped[0]) != inbox:
            return []
        handed = []
        for entry in popped[1]:
            d, task_id, body = raw(entry).split(b" ", 2)
            token = f"{session}/{int(d)}"
            handed.append(Claimed(queue, task_id.decode(), body, int(d), token, False))
        return handed

    async def leave(self, queue: str, session: str) -> int:
        """Drop an idle registration; what its inbox holds goes back to ready, unrun."""
        async with unavailable_as(self.where):
            back = await self._script("leave", queue, [session])
        return int(back)

    async def promote_due(self, queue: str, limit: int) -> Promoted:
        async with unavailable_as(self.where):
            args = [limit, self._flag, self._ttl]
            moved, now, nxt = await self._script("promote", queue, args)
        return Promoted(int(moved), int(now), int(nxt))

    async def get_pending_tasks(self, queue: str) -> list[Signature]:
        q = self._q(queue)
        async with unavailable_as(self.where):
            ids: list[Any] = list(await self._main.zrange(q.ready, 0, -1))
            for name in await self._main.smembers(q.parked):
                ids += await self._main.zrange(q.parked_prefix + text(name), 0, -1)
            return await self._signatures(q, [text(i) for i in ids])

    async def get_delayed_tasks(self, queue: str) -> list[Signature]:
        q = self._q(queue)
        async with unavailable_as(self.where):
            ids = await self._main.zrange(q.delayed, 0, -1)
            return await self._signatures(q, [text(i) for i in ids])

    async def _signatures(self, q: QueueKeys, ids: list[str]) -> list[Signature]:
        out: list[Signature] = []
        for task_id in ids:
            body = await self._main.hget(q.record(task_id), "b")
            if body is None:
                continue
            try:
                out.append(to_signature(decode_task(raw(body))))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("pending message %s cannot be decoded (%s); not listed", task_id, exc)
        return out

    async def get_dead_letters(self, queue: str) -> list[DeadLetter]:
        q = self._q(queue)
        async with unavailable_as(self.where):
            entries: list[Any] = await self._main.zrange(q.dead, 0, -1, withscores=True)
            out = []
            for member, score in entries:
                task_id = text(member)
                fields: list[Any] = await self._main.hmget(q.record(task_id), ["b", "e", "d"])
                body, reason, d = fields
                out.append(
                    DeadLetter(
                        task_id, text(reason or b""), int(d or 0), raw(body or b""), int(score)
                    )
                )
            return out

    async def cancel(self, queue: str, task_ids: Sequence[str]) -> list[bool]:
        if self._store is not None:
            return await self._cancel_with_store(queue, task_ids, self._store)
        args = [self._flag, self._ttl, *task_ids]
        async with unavailable_as(self.where):
            flags = await self._script("cancel", queue, args)
        return [bool(f) for f in flags]

    async def _cancel_with_store(
        self, queue: str, task_ids: Sequence[str], store: Backend
    ) -> list[bool]:
        """Cancel with states on another Redis: a finished task (seen there) is left alone."""
        states = {i: await store.get_state(queue, i) for i in task_ids}
        open_ids = [i for i, st in states.items() if not (st and st.is_completed())]
        args = [self._flag, self._ttl, *open_ids]
        async with unavailable_as(self.where):
            reply = await self._script("cancel", queue, args)
        flags = dict(zip(open_ids, reply, strict=True))
        writes = []
        for i in open_ids:
            if flags[i]:
                st = states[i]
                name = st.task_name if st else ""
                canceled = TaskState(task_id=i, state=State.CANCELED, task_name=name)
                writes.append(StateWrite(queue, i, encode(canceled), store.reply_channel))
        await store.store(writes)
        return [bool(flags.get(i)) for i in task_ids]

    async def requeue_dead_letter(self, queue: str, task_id: str) -> bool:
        async with unavailable_as(self.where):
            back = bool(await self._script("requeue_dead", queue, [task_id, self._flag]))
        if back and self._store is not None:  # its FAILURE there is no longer true
            pending = encode(TaskState(task_id=task_id, state=State.PENDING))
            await self._store.store([StateWrite(queue, task_id, pending)])
        return back
