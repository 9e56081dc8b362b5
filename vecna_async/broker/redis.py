"""The Redis broker: every queue operation is one Lua script call (see ``vecna_async/lua/``).

Listings (pending, delayed, dead letters) and the known-queues set live in ``listing.py`` and
``queues.py``; this module is the delivery path: enqueue, claim, settle, heartbeat, wake-up,
promotion and cancel.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import msgspec.msgpack
from redis.asyncio.cluster import RedisCluster

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
from vecna_async.broker.listing import Listing
from vecna_async.broker.queues import KnownQueues
from vecna_async.config import Config
from vecna_async.connection import RedisClients, raw, text
from vecna_async.keys import Keys, QueueKeys
from vecna_async.messages import DeadLetter, State, TaskState, encode
from vecna_async.pinned import PinnedConnection
from vecna_async.redis_errors import redis_errors
from vecna_async.scripts import script
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import Outgoing

log = logging.getLogger("vecna_async.broker")

msgpack_encode = msgspec.msgpack.Encoder().encode

DEAD_LETTER_PAGE = 500


@asynccontextmanager
async def unavailable_as(where: str, doing: str = "") -> AsyncIterator[None]:
    """``redis_errors`` for ``async with`` callers."""
    with redis_errors(where, doing):
        yield


def _packed(fields: list[Any]) -> bytes:
    """Many script arguments as one msgpack array: redis-py packs each argument in Python, ~1 us
    apiece, ~10 per task. Redis's Lua msgpack reads strings, not binary, so bytes (JSON bodies
    and states, always UTF-8) go as str."""
    return msgpack_encode([f.decode() if type(f) is bytes else f for f in fields])


def _message_args(m: Outgoing, write: str) -> list[Any]:
    """A message as the Lua ``enqueue`` takes it (lua/_lib.lua); ``write`` is "1" when the
    states live on this Redis."""
    return [
        m.id, m.name, m.body, m.priority, m.due_ms, m.flags, m.reply_to, write,
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
        m.flags, m.reply_to, "1" if write_states else "",
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
        # How long redis-py (and PinnedConnection's one retry) may still resend a call, each
        # attempt waiting up to a read timeout: the life of the request ids that make a resent
        # enqueue, claim or settle a no-op.
        self._resend_window = int((r.retries + 2) * (r.read_timeout + 0.5)) + 1
        self._ttl = config.results_expire_in
        self._lease_ms = int(r.lease_timeout * 1000)
        self._wait = (r.wait_replicas, r.wait_timeout) if r.wait_replicas else None
        # The most the queue's lease clock moves in one step (see lua/_lib.lua lease_clock):
        # half of what a heartbeat leaves on a lease, so a live worker's leases outlast any gap.
        self._max_step_ms = max(1, int((r.lease_timeout - r.heartbeat_interval) * 500))
        self.queues = KnownQueues(clients.main, keys, self.where)
        self.listing = Listing(clients.main, keys, self.where)
        self._coalescer = Coalescer(self._enqueue)
        # One connection each for the hot callers (see PinnedConnection).
        self._send_conn = PinnedConnection(clients.main)
        self._claim_conn = PinnedConnection(clients.main)
        self._settle_conn = PinnedConnection(clients.main)
        self._wait_conn = PinnedConnection(clients.blocking)  # the consumer's idle wait
        self._blocking = clients.blocking
        self._cluster = isinstance(clients.main, RedisCluster)

    def _q(self, queue: str) -> QueueKeys:
        return self._keys.queue(queue)

    async def _script(
        self,
        name: str,
        queue: str,
        args: list[Any],
        via: PinnedConnection | None = None,
        *,
        durable: bool = True,
    ) -> Any:
        """Run a queue script: KEYS is one key of the queue (Cluster routes on it), ARGV starts
        with the queue's packed keys and the scheduler channel. ``via`` a pinned connection
        for the hot paths (claim, settle, send). ``durable``: with ``wait_replicas`` set, the
        call counts as done only once that many replicas have its writes (else BrokerRefused
        NOREPLICAS, transient: a send raises it, a claim's messages are not run and come back
        after their lease, a settle is sent again)."""
        packed = self._keys.packed_queue(queue)
        argv = [packed, self._keys.sched_channel, *args]
        wait = self._wait if durable else None
        with redis_errors(self.where, name):
            return await script(name)(via or self._main, [self._q(queue).ready], argv, wait)

    # -- sending ----------------------------------------------------------------------------
    async def publish(
        self, messages: Sequence[Outgoing], request_id: str = "", request_ttl: int = 0
    ) -> None:
        if request_id:  # its own call: the request id is what deduplicates it
            await self._enqueue(messages, request_id, request_ttl)
        else:
            await self._coalescer.publish(messages)

    async def publish_tick(
        self, messages: Sequence[Outgoing], code: str, chunk: int, tick_ms: int, fired_ttl: int
    ) -> None:
        """One chunk of a periodic tick's messages: each queue takes it at most once per tick
        (and never a tick older than one it took), whichever and however many schedulers fire
        it (``lua/enqueue_tick.lua``)."""
        await self._enqueue(messages, tick=(code, chunk, tick_ms, fired_ttl))

    async def _enqueue(
        self,
        messages: Sequence[Outgoing],
        request_id: str = "",
        request_ttl: int = 0,
        tick: tuple[str, int, int, int] | None = None,
    ) -> None:
        by_queue: dict[str, list[Outgoing]] = defaultdict(list)
        for m in messages:
            by_queue[m.queue].append(m)
        request_id = request_id or uuid.uuid4().hex
        if self._store is not None:
            # Before the enqueue, so a fast result is never overwritten by PENDING; and only
            # where no state is yet, so a duplicate send or a late periodic firing of a
            # finished id never turns its SUCCESS back into PENDING.
            await self._store.store(
                [StateWrite(m.queue, m.id, m.pending_state, if_absent=True) for m in messages]
            )
        for queue, batch in by_queue.items():
            if any(m.due_ms for m in batch):
                await self.queues.remember(queue)
            fields: list[Any] = []
            for m in batch:
                fields += _message_args(m, self._flag_str)
            if tick is not None:
                args = [*tick, self._ttl, _packed(fields)]
                await self._script("enqueue_tick", queue, args, self._send_conn)
                continue
            args = [request_id, request_ttl or self._resend_window, self._ttl, _packed(fields)]
            await self._script("enqueue", queue, args, self._send_conn)

    async def close(self) -> None:
        """Give the pinned connections back to the pool (before the pool closes)."""
        for conn in (self._send_conn, self._claim_conn, self._settle_conn, self._wait_conn):
            await conn.close()

    # -- consuming --------------------------------------------------------------------------
    async def claim(
        self, queue: str, max_n: int, task_names: Sequence[str], worker: str = ""
    ) -> list[Claimed]:
        r = self._config.redis
        nonce = uuid.uuid4().hex[:16]
        args = [
            nonce, uuid.uuid4().hex, max_n, self._lease_ms, r.max_deliveries, self._flag,
            self._ttl, max(100, max_n), self._resend_window, self._max_step_ms,
            r.dead_letters_max, r.dead_letters_max_age * 1000, r.parked_max_age * 1000,
            worker, *task_names,
        ]  # fmt: skip
        flat = await self._script("claim", queue, args, self._claim_conn)
        out = []
        for i in range(0, len(flat), 5):
            flag = text(flat[i + 3])
            dead = flag[5:] if flag.startswith("dead:") else None
            out.append(
                Claimed(queue, text(flat[i]), raw(flat[i + 1]), int(flat[i + 2]),
                        text(flat[i + 4]), flag == "unregistered", dead)
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
        for name in others:
            if any(m.due_ms for d in batch.done for m in d.follow_ups if m.queue == name):
                await self.queues.remember(name)
        other_args = [self._keys.packed_queue(name) for name in others]  # in qi() order
        args = [
            self._flag, self._ttl, batch.request_id, self._resend_window, len(others),
            *other_args, _packed(entries),
        ]  # fmt: skip
        lost = await self._script("settle", batch.queue, args, self._settle_conn)
        return [text(x) for x in lost]

    async def extend_leases(self, queue: str, leases: Sequence[tuple[str, str]]) -> list[str]:
        args: list[Any] = [self._lease_ms, self._max_step_ms]
        for task_id, token in leases:
            args += [task_id, token]
        # not durable: a renewal lost in a failover costs at most one heartbeat interval
        lost = await self._script("heartbeat", queue, args, durable=False)
        return [text(x) for x in lost]

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        wakes = [self._q(queue).wake for queue in queues]
        with redis_errors(self.where, "waiting for work"):
            if len(wakes) == 1 or not self._cluster:
                popped = await self._wait_conn.execute("BLPOP", *wakes, timeout)
                return popped is not None
            return await self._wait_each(wakes, timeout)

    async def _wait_each(self, wakes: list[str], timeout: float) -> bool:
        """On a Cluster the queues' wake-up lists live in different slots, so one BLPOP cannot
        wait on all: one waits on each, and the first to wake ends the others."""
        woken = False
        async with anyio.create_task_group() as tg:

            async def wait(key: str) -> None:
                nonlocal woken
                if await self._blocking.blpop([key], timeout) is not None:
                    woken = True
                    tg.cancel_scope.cancel()

            for key in wakes:
                tg.start_soon(wait, key)
        return woken

    async def promote_due(self, queue: str, limit: int) -> Promoted:
        # not durable: a promotion lost in a failover is made again by the next pass
        args = [limit, self._flag, self._ttl]
        moved, now, nxt = await self._script("promote", queue, args, durable=False)
        return Promoted(int(moved), int(now), int(nxt))

    # -- canceling and dead letters ---------------------------------------------------------
    async def cancel(
        self, queue: str, task_ids: Sequence[str], *, running: bool = False
    ) -> list[bool]:
        """Cancel tasks; True per id that will not finish on its own. ``running``: a task a
        worker runs right now is canceled too (its worker is told to stop it); else only
        tasks that have not started are."""
        if self._store is not None:
            return await self._cancel_with_store(queue, task_ids, self._store, running)
        flags = await self._script("cancel", queue, self._cancel_args(running, task_ids))
        return [bool(f) for f in flags]

    def _cancel_args(self, running: bool, task_ids: Sequence[str]) -> list[Any]:
        return [self._flag, self._ttl, int(running), self._keys.cancel_channel, *task_ids]

    async def _cancel_with_store(
        self, queue: str, task_ids: Sequence[str], store: Backend, running: bool
    ) -> list[bool]:
        """Cancel with states on another Redis: a finished task (seen there) is left alone."""
        states = {i: await store.get_state(queue, i) for i in task_ids}
        open_ids = [i for i, st in states.items() if not (st and st.is_completed())]
        reply = await self._script("cancel", queue, self._cancel_args(running, open_ids))
        flags = dict(zip(open_ids, reply, strict=True))
        writes = []
        for i in open_ids:
            if flags[i]:
                st = states[i]
                name = st.task_name if st else ""
                canceled = TaskState(task_id=i, state=State.CANCELED, task_name=name)
                # not over a final state: the task may have finished since it was read above
                write = StateWrite(
                    queue, i, encode(canceled), store.reply_channel, unless_final=True
                )
                writes.append(write)
        await store.store(writes)
        return [bool(flags.get(i)) for i in task_ids]

    async def get_pending_tasks(self, queue: str) -> list[Signature]:
        return await self.listing.pending(queue)

    async def get_delayed_tasks(self, queue: str) -> list[Signature]:
        return await self.listing.delayed(queue)

    async def get_dead_letters(
        self, queue: str, offset: int = 0, limit: int = 100
    ) -> list[DeadLetter]:
        return await self.listing.dead_letters(queue, offset, limit)

    async def requeue_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        back = await self._each_dead_page(queue, ids, "requeue_dead", [self._flag])
        if back and self._store is not None:  # their FAILURE there is no longer true
            await self._store.store(
                [
                    StateWrite(queue, i, encode(TaskState(task_id=i, state=State.PENDING)))
                    for i in back
                ]
            )
        return len(back)

    async def requeue_dead_letter(self, queue: str, task_id: str) -> bool:
        """Put one dead letter back to ready; False if it is not (or no longer) one."""
        return await self.requeue_dead_letters(queue, [task_id]) == 1

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        return len(await self._each_dead_page(queue, ids, "purge_dead", []))

    async def _each_dead_page(
        self, queue: str, ids: Sequence[str] | None, name: str, args: list[Any]
    ) -> list[str]:
        """Run a dead-letter script over ``ids``, or over every dead letter page by page (so a
        large dead set is never loaded at once); returns the ids it acted on."""
        done: list[str] = []
        if ids is not None:
            for start in range(0, len(ids), DEAD_LETTER_PAGE):
                page = list(ids[start : start + DEAD_LETTER_PAGE])
                done += await self._dead_page(queue, name, args, page)
            return done
        while page := await self.listing.dead_ids(queue, DEAD_LETTER_PAGE):
            acted = await self._dead_page(queue, name, args, page)
            if not acted:  # nothing more it can act on (e.g. raced with another purge)
                break
            done += acted
        return done

    async def _dead_page(self, queue: str, name: str, args: list[Any], ids: list[str]) -> list[str]:
        reply = await self._script(name, queue, [*args, *ids])
        return [text(x) for x in reply]
