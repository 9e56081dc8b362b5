"""Batches task outcomes into one settle call per queue.

Executors hand their outcome here and move on; the flusher sends everything that accumulated while
the previous call was in flight, so under load one round trip settles many tasks, and when idle a
single outcome goes out at once. A STARTED mark still waiting when the task's final outcome arrives
is folded into it: the final state supersedes it. On a Redis outage outcomes stay buffered and
are retried with back-off; leases that expire meanwhile make the settle report them lost, which is
at-least-once delivery doing its job (the message runs again elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from vecna_async.backend.base import Backend, StateWrite
from vecna_async.broker.base import Broker, ChordFailure, Claimed, Done, SettleBatch
from vecna_async.exceptions import BrokerUnavailable
from vecna_async.messages import State, TaskState, encode

log = logging.getLogger("vecna_async.worker")


@dataclass(slots=True)
class _Pending:
    """Outcomes of one queue not yet sent, plus the state writes a separate backend needs."""

    started: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (token, name)
    batch: SettleBatch | None = None
    writes: dict[str, StateWrite] = field(default_factory=dict)
    # Written before the settle: the states of a dead letter's aftermath (see flush).
    early_writes: dict[str, StateWrite] = field(default_factory=dict)


class Flusher:
    """Collects outcomes and settles them in batches; ``run`` is its loop, ``drain`` empties it."""

    def __init__(
        self,
        broker: Broker,
        state_store: Backend | None,
        on_settled: Callable[[list[str]], None],
    ) -> None:
        self._broker = broker
        self._store = state_store  # only when results live on another Redis than the broker
        self._on_settled = on_settled  # ids whose lease is gone: stop heartbeating them
        self._pending: dict[str, _Pending] = {}
        self._wakeup = anyio.Event()

    def _slot(self, queue: str) -> _Pending:
        p = self._pending.get(queue)
        if p is None:
            p = self._pending[queue] = _Pending()
        if p.batch is None:
            p.batch = SettleBatch(queue)
        self._wakeup.set()
        return p

    def started(self, c: Claimed, name: str) -> None:
        self._slot(c.queue).started[c.id] = (c.token, name)

    def done(self, c: Claimed, done: Done, reply_to: str) -> None:
        p = self._slot(c.queue)
        p.started.pop(c.id, None)
        assert p.batch is not None
        p.batch.done.append(done)
        if self._store is not None:
            self._note_writes(p.writes, c, done, reply_to)

    @staticmethod
    def _note_writes(writes: dict[str, StateWrite], c: Claimed, done: Done, reply_to: str) -> None:
        """The states a separate backend must store for this outcome."""
        writes[c.id] = StateWrite(c.queue, c.id, done.state, reply_to)
        for m in done.follow_ups:
            writes[m.id] = StateWrite(m.queue, m.id, m.pending_state, if_absent=True)
        for x in done.extra_states:
            writes[x.task_id] = StateWrite(x.queue, x.task_id, x.state, x.reply_to)
        if isinstance(done.chord, ChordFailure):
            cb = done.chord.callback
            writes[cb.task_id] = StateWrite(cb.queue, cb.task_id, cb.state, cb.reply_to)

    def retry(self, c: Claimed, state: bytes, body: bytes, delay_ms: int) -> None:
        p = self._slot(c.queue)
        p.started.pop(c.id, None)
        assert p.batch is not None
        p.batch.retry.append((c.id, c.token, state, body, delay_ms))
        if self._store is not None:
            p.writes[c.id] = StateWrite(c.queue, c.id, state)

    def dead(self, c: Claimed, reason: str, state: bytes, reply_to: str = "") -> None:
        p = self._slot(c.queue)
        p.started.pop(c.id, None)
        assert p.batch is not None
        p.batch.dead.append((c.id, c.token, reason, state))
        if self._store is not None:
            p.writes[c.id] = StateWrite(c.queue, c.id, state, reply_to)

    def aftermath(self, c: Claimed, done: Done, reply_to: str) -> None:
        """What follows from a message a claim dead-lettered (applied once, without a lease)."""
        p = self._slot(c.queue)
        assert p.batch is not None
        p.batch.aftermath.append(done)
        if self._store is not None:
            self._note_writes(p.early_writes, c, done, reply_to)

    def park(self, c: Claimed, name: str) -> None:
        p = self._slot(c.queue)
        p.started.pop(c.id, None)
        assert p.batch is not None
        p.batch.park.append((c.id, c.token, name))

    def release(self, c: Claimed) -> None:
        p = self._slot(c.queue)
        p.started.pop(c.id, None)
        assert p.batch is not None
        p.batch.release.append((c.id, c.token))

    def pending(self) -> bool:
        return any(p.batch or p.started for p in self._pending.values())

    async def run(self) -> None:
        """Settle whatever accumulated, forever (cancel to stop; then call ``drain``)."""
        backoff = 0.05
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            try:
                await self.flush()
                backoff = 0.05
            except BrokerUnavailable as exc:
                log.warning("cannot settle outcomes (%s); retrying in %.2fs", exc, backoff)
                self._wakeup.set()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def flush(self) -> None:
        """Send everything buffered now; on failure the unsent part stays buffered."""
        for queue in list(self._pending):
            p = self._pending[queue]
            batch, p.batch = p.batch or SettleBatch(queue), None
            batch.started = [(i, t) for i, (t, _) in p.started.items()]
            if self._store is not None:
                for i, (_, name) in p.started.items():
                    mark = TaskState(task_id=i, state=State.STARTED, task_name=name)
                    p.writes.setdefault(i, StateWrite(queue, i, encode(mark)))
            started, p.started = p.started, {}
            writes, p.writes = p.writes, {}
            early, p.early_writes = p.early_writes, {}
            if not len(batch) and not writes:
                continue
            try:
                if self._store is not None and early:
                    # A dead letter's aftermath has no lease to fence it, and its settle drops
                    # it from the set that offers it again: its states go first, so a worker
                    # dying in between leaves it to be offered (and its states written) again.
                    await self._store.store(list(early.values()))
                    early = {}
                lost = await self._broker.settle(batch) if len(batch) else []
                if self._store is not None:
                    dropped = set(lost)
                    await self._store.store([w for k, w in writes.items() if k not in dropped])
            except BrokerUnavailable:
                self._restore(queue, batch, started, writes)
                p.early_writes.update(early)
                raise
            if lost:
                log.warning(
                    "%d outcome(s) in queue %r were not applied: the lease had expired and the "
                    "message was redelivered (%s)",
                    len(lost),
                    queue,
                    ", ".join(lost[:5]),
                )
            settled = [d.task_id for d in batch.done]
            settled += [e[0] for es in (batch.retry, batch.dead, batch.release) for e in es]
            settled += [e[0] for e in batch.park]
            self._on_settled(settled)

    def _restore(
        self,
        queue: str,
        batch: SettleBatch,
        started: dict[str, tuple[str, str]],
        writes: dict[str, StateWrite],
    ) -> None:
        p = self._pending[queue]
        newer = p.batch
        p.batch = batch
        batch.started = []
        if newer is not None:
            batch.done += newer.done
            batch.aftermath += newer.aftermath
            batch.retry += newer.retry
            batch.dead += newer.dead
            batch.release += newer.release
            batch.park += newer.park
        for k, v in started.items():
            p.started.setdefault(k, v)
        for k, w in writes.items():
            p.writes.setdefault(k, w)

    async def drain(self, timeout: float) -> bool:
        """Flush until nothing is buffered or ``timeout`` passes; True when all went out."""
        with anyio.move_on_after(timeout):
            while self.pending():
                try:
                    await self.flush()
                except BrokerUnavailable as exc:
                    log.warning("cannot settle outcomes at shutdown (%s); retrying", exc)
                    await anyio.sleep(0.2)
            return True
        return False
