"""Batches task outcomes into one settle call per queue.

Executors hand their outcome here and move on; the flusher sends everything that accumulated while
the previous call was in flight, so under load one round trip settles many tasks, and when idle a
single outcome goes out at once. A STARTED mark still waiting when the delivery's final outcome
arrives is folded into it: the final state supersedes it.

Nothing is dropped on trouble. A batch whose call failed (an outage, an error reply like OOM or
READONLY, a lost reply) is kept exactly as it was and sent again, before anything newer, with the
same request id: if the first call was applied after all, Redis answers what it answered then,
so no outcome is applied twice and none is taken for lost. Leases that expire meanwhile make the
settle report those deliveries lost: at-least-once delivery doing its job (the message runs
again elsewhere). A delivery whose message no longer exists in Redis at all (Redis lost its
data) is reported gone, and logged as such: nothing runs it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from vecna_async.backend.base import Backend, StateWrite
from vecna_async.broker.base import Broker, ChordFailure, Claimed, Done, SettleBatch
from vecna_async.messages import State, TaskState, encode
from vecna_async.redis_errors import is_transient
from vecna_async.worker.heartbeat import GONE_REASON, split_reply

log = logging.getLogger("vecna_async.worker")
Writes = dict[str, list[StateWrite]]
"""States a separate result backend must store, per delivery token (dropped if it was lost)."""


@dataclass(slots=True)
class _Unsent:
    batch: SettleBatch
    writes: Writes


@dataclass(slots=True)
class _Pending:
    """Outcomes of one queue not yet sent, plus the state writes a separate backend needs."""

    started: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (id, name)
    batch: SettleBatch | None = None
    writes: Writes = field(default_factory=dict)
    # Written before the settle: the states of a dead letter's aftermath (see _send).
    early_writes: list[StateWrite] = field(default_factory=list)
    unsent: list[_Unsent] = field(default_factory=list)


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
        self._on_settled = on_settled  # tokens whose lease is gone: free their slots
        self._pending: dict[str, _Pending] = {}
        self._wakeup = anyio.Event()

    def _slot(self, queue: str) -> tuple[_Pending, SettleBatch]:
        p = self._pending.get(queue)
        if p is None:
            p = self._pending[queue] = _Pending()
        if p.batch is None:
            p.batch = SettleBatch(queue)
        self._wakeup.set()
        return p, p.batch

    def started(self, c: Claimed, name: str) -> None:
        p, _ = self._slot(c.queue)
        p.started[c.token] = (c.id, name)

    def done(self, c: Claimed, done: Done, reply_to: str) -> None:
        p, batch = self._slot(c.queue)
        p.started.pop(c.token, None)
        batch.done.append(done)
        if self._store is not None:
            p.writes[c.token] = self._done_writes(c, done, reply_to)

    @staticmethod
    def _done_writes(c: Claimed, done: Done, reply_to: str) -> list[StateWrite]:
        """The states a separate backend must store for this outcome."""
        writes = [StateWrite(c.queue, c.id, done.state, reply_to)]
        writes += [
            StateWrite(m.queue, m.id, m.pending_state, if_absent=True) for m in done.follow_ups
        ]
        writes += [StateWrite(x.queue, x.task_id, x.state, x.reply_to) for x in done.extra_states]
        if isinstance(done.chord, ChordFailure):
            cb = done.chord.callback
            writes.append(StateWrite(cb.queue, cb.task_id, cb.state, cb.reply_to))
        return writes

    def retry(self, c: Claimed, state: bytes, body: bytes, delay_ms: int) -> None:
        p, batch = self._slot(c.queue)
        p.started.pop(c.token, None)
        batch.retry.append((c.id, c.token, state, body, delay_ms))
        if self._store is not None:
            # written after its settle: another copy may have finished in between
            p.writes[c.token] = [StateWrite(c.queue, c.id, state, unless_final=True)]

    def dead(self, c: Claimed, reason: str, state: bytes, reply_to: str = "") -> None:
        p, batch = self._slot(c.queue)
        p.started.pop(c.token, None)
        batch.dead.append((c.id, c.token, reason, state))
        if self._store is not None:
            p.writes[c.token] = [StateWrite(c.queue, c.id, state, reply_to)]

    def aftermath(self, c: Claimed, done: Done, reply_to: str) -> None:
        """What follows from a message a claim dead-lettered (applied once, without a lease)."""
        p, batch = self._slot(c.queue)
        batch.aftermath.append(done)
        if self._store is not None:
            p.early_writes += self._done_writes(c, done, reply_to)

    def release(self, c: Claimed) -> None:
        p, batch = self._slot(c.queue)
        p.started.pop(c.token, None)
        batch.release.append((c.id, c.token))

    def pending(self) -> bool:
        return any(p.batch or p.started or p.unsent for p in self._pending.values())

    async def run(self) -> None:
        """Settle whatever accumulated, forever (cancel to stop; then call ``drain``)."""
        backoff = 0.05
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            try:
                await self.flush()
                backoff = 0.05
            except Exception as exc:  # kept for the next try: never dropped
                if is_transient(exc):
                    log.warning("cannot settle outcomes (%s); retrying in %.2fs", exc, backoff)
                else:
                    log.exception("settling outcomes failed; retrying in %.2fs", backoff)
                self._wakeup.set()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def flush(self) -> None:
        """Send everything buffered now, failed batches first; on failure what was not sent
        stays buffered, exactly as it was."""
        for queue in list(self._pending):
            p = self._pending[queue]
            while p.unsent:
                await self._send(queue, p.unsent[0])
                p.unsent.pop(0)
            batch, p.batch = p.batch or SettleBatch(queue), None
            batch.started = [(i, token) for token, (i, _) in p.started.items()]
            writes, p.writes = p.writes, {}
            if self._store is not None:
                for token, (i, name) in p.started.items():
                    mark = TaskState(task_id=i, state=State.STARTED, task_name=name)
                    started = StateWrite(queue, i, encode(mark), unless_final=True)
                    writes.setdefault(token, [started])
            p.started = {}
            if not len(batch) and not writes:
                continue
            unsent = _Unsent(batch, writes)
            try:
                if self._store is not None and p.early_writes:
                    # A dead letter's aftermath has no lease to fence it, and its settle drops
                    # it from the set that offers it again: its states go first, so a worker
                    # dying in between leaves it to be offered (and its states written) again.
                    await self._store.store(p.early_writes)
                    p.early_writes = []
                await self._send(queue, unsent)
            except BaseException:
                p.unsent.append(unsent)
                raise

    async def _send(self, queue: str, unsent: _Unsent) -> None:
        batch = unsent.batch
        reply = await self._broker.settle(batch) if len(batch) else []
        lost, gone, canceled = split_reply(reply)
        runs: dict[str, str] = {}  # token -> task id, needed only when something was not applied
        if lost or gone:
            runs = {d.token: d.task_id for d in batch.done}
            runs.update((e[1], e[0]) for es in (batch.retry, batch.dead) for e in es)
        if self._store is not None:
            lost, gone = await self._finished_elsewhere(queue, runs, lost, gone)
            dropped = {*lost, *gone, *canceled}
            await self._store.store(
                [w for token, ws in unsent.writes.items() if token not in dropped for w in ws]
            )
        if lost_runs := [t for t in lost if t in runs]:
            log.warning(
                "%d outcome(s) in queue %r were not applied: the lease had expired and the "
                "message was delivered again",
                len(lost_runs),
                queue,
            )
        if gone_runs := [t for t in gone if t in runs]:
            log.warning(
                "%d outcome(s) in queue %r were not applied: %s",
                len(gone_runs),
                queue,
                GONE_REASON,
            )
        if canceled:
            log.info(
                "%d task(s) in queue %r were canceled while they ran: their outcome is dropped",
                len(canceled),
                queue,
            )
        self._on_settled(batch.tokens())

    async def _finished_elsewhere(
        self, queue: str, runs: dict[str, str], lost: list[str], gone: list[str]
    ) -> tuple[list[str], list[str]]:
        """With states on a separate backend the broker cannot tell a message another delivery
        finished (and acked) from one Redis lost: a final state on the backend tells."""
        assert self._store is not None
        still_gone = []
        for token in gone:
            state = await self._store.get_state(queue, runs[token]) if token in runs else None
            if state is not None and state.is_completed():
                lost.append(token)
            else:
                still_gone.append(token)
        return lost, still_gone

    async def drain(self, timeout: float) -> bool:
        """Flush until nothing is buffered or ``timeout`` passes; True when all went out."""
        with anyio.move_on_after(timeout):
            while self.pending():
                try:
                    await self.flush()
                except Exception as exc:
                    log.warning("cannot settle outcomes at shutdown (%s); retrying", exc)
                    await anyio.sleep(0.2)
            return True
        return False
