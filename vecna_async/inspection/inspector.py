"""``server.inspect()``: what a running deployment holds, and the few actions an operator takes.

Everything is read through the broker's listings (``broker/listing.py``), the worker registry
(``worker/presence.py``), the periodic store and the result backend: this module knows no key
names. Listings are paged (``offset``/``limit``), so a queue of millions is never loaded at once,
and reading never writes (not even the housekeeping other readers do on the way).

Which queues: Redis has no list of every queue, so ``queues()`` shows the ones that are known:
``default_queue``, every queue a live worker consumes, every queue that had delayed entries in the
last day (the schedulers' known-queues set), and the ``queues`` given to ``server.inspect()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from vecna_async.config import mask_url
from vecna_async.inspection.types import (
    DeadLetterInfo,
    DelayedTask,
    PeriodicInfo,
    QueueInfo,
    RunningTask,
    Snapshot,
    TaskInfo,
    WorkerInfo,
    utc,
)
from vecna_async.keys import check_name
from vecna_async.messages import (
    PeriodicDefinition,
    QuarantinedPeriodic,
    State,
    TaskMessage,
    decode_task,
)
from vecna_async.redis_errors import redis_errors
from vecna_async.tasks.wire import walk
from vecna_async.worker.presence import registered_workers

if TYPE_CHECKING:
    from vecna_async.broker.listing import Stored
    from vecna_async.messages import TaskState
    from vecna_async.runtime import Runtime
    from vecna_async.server import Server


WAITING = ("ready", "delayed", "parked", "held")
"""Where a message waits to be run (``TaskInfo.place``)."""


class Inspector:
    """Queues, workers, running, delayed and periodic tasks, dead letters and single tasks of the
    Server's Redis; requeue or purge dead letters, cancel a delayed task or a periodic entry.

    >>> # insp = server.inspect()
    >>> # for q in await insp.queues(): print(q.name, q.ready, q.running, q.dead_letters)
    >>> # info = await insp.task(task_id)          # TaskInfo | None
    """

    def __init__(self, server: Server, queues: Iterable[str] = ()) -> None:
        self._server = server
        self._extra = [check_name("queue name", q) for q in queues]

    @property
    def where(self) -> str:
        """The broker's URL, password masked (for titles and messages)."""
        return mask_url(self._server.config.broker)

    @property
    def default_queue(self) -> str:
        """The Server's ``default_queue``."""
        return self._server.config.default_queue

    @asynccontextmanager
    async def _rt(self) -> AsyncIterator[Runtime]:
        # the Server's connections if it is connected (``async with server``), else its own
        # for the call
        async with self._server.connection() as rt:
            yield rt

    # -- reading -------------------------------------------------------------------------------
    async def queue_names(self) -> list[str]:
        """The queues ``queues()`` shows (see the module docstring), sorted."""
        async with self._rt() as rt:
            _, workers = await _registry(rt)
            return await self._names(rt, workers)

    async def _names(self, rt: Runtime, workers: list[WorkerInfo]) -> list[str]:
        names = {rt.config.default_queue, *self._extra, *await rt.broker.listing.known_queues()}
        for w in workers:
            names.update(w.queues)
        return sorted(names)

    async def queues(self) -> list[QueueInfo]:
        """Each known queue with its counts: ready, delayed, running, dead letters, parked and
        held messages (a few commands per queue, in two round trips)."""
        async with self._rt() as rt:
            _, workers = await _registry(rt)
            return await _counted(rt, await self._names(rt, workers))

    async def now(self) -> datetime:
        """Redis's clock, which every time the inspector returns is read from."""
        async with self._rt() as rt:
            with redis_errors(rt.broker.where, "reading Redis's clock"):
                seconds, micros = await rt.broker_clients.main.time()
        return utc(int(seconds) * 1000 + int(micros) // 1000)

    async def workers(self) -> list[WorkerInfo]:
        """The live workers, most recently seen first. A worker that stops heartbeating (killed,
        hung, cut off) drops out after three heartbeat intervals by itself."""
        async with self._rt() as rt:
            return (await _registry(rt))[1]

    async def running(self, queue: str, offset: int = 0, limit: int = 100) -> list[RunningTask]:
        """Tasks of ``queue`` running now, with their worker and lease deadline; the lease
        closest to expiry first. A task on the list whose lease deadline is past belongs to a
        worker that died: the next claim hands it out again."""
        async with self._rt() as rt:
            page = await rt.broker.listing.running(queue, offset, limit)
        return [
            RunningTask(e.task_id, e.name, e.worker, utc(e.deadline_ms), utc(e.claimed_ms), queue)
            for e in page
        ]

    async def delayed(self, queue: str, offset: int = 0, limit: int = 100) -> list[DelayedTask]:
        """Tasks of ``queue`` waiting for their ETA or retry time, the earliest first."""
        async with self._rt() as rt:
            page = await rt.broker.listing.delayed_page(queue, offset, limit)
        return [DelayedTask(e.task_id, e.name, utc(e.due_ms), queue) for e in page]

    async def periodic(self) -> list[PeriodicInfo]:
        """Every periodic definition by code, quarantined ones included (with the reason)."""
        async with self._rt() as rt:
            definitions = await rt.periodic.definitions()
            upcoming, last = await rt.periodic.fire_times()
            bad = await rt.periodic.quarantined()
        out = [_periodic(d, upcoming, last) for d in definitions.values()]
        out += [_quarantined(q, utc(last.get(q.code))) for q in bad if q.code not in definitions]
        return sorted(out, key=lambda p: p.code)

    async def dead_letters(
        self, queue: str, offset: int = 0, limit: int = 100
    ) -> list[DeadLetterInfo]:
        """One page of ``queue``'s dead letters, oldest first, with the reason."""
        async with self._rt() as rt:
            page = await rt.broker.listing.dead_letters(queue, offset, limit)
            names = await rt.broker.listing.names(queue, [d.task_id for d in page])
        return [
            DeadLetterInfo(d.task_id, name, d.reason, utc(d.dead_at_ms), d.deliveries, queue)
            for d, name in zip(page, names, strict=True)
        ]

    async def find_queue(self, task_id: str) -> str | None:
        """The queue that holds ``task_id``'s message, else the first whose result backend
        has a state for it, among the known queues (``queue_names``); None if none."""
        check_name("task id", task_id)
        names = await self.queue_names()
        async with self._rt() as rt:
            holding = await rt.broker.listing.holding(task_id, names)
            if holding:
                return holding[0]
            for name in names:
                if await rt.results.get_state(name, task_id) is not None:
                    return name
        return None

    async def task(self, task_id: str, queue: str | None = None) -> TaskInfo | None:
        """One task by id: its state, what its message says and where it is; None if the id is
        unknown (never sent, or finished longer than ``results_expire_in`` ago). Without
        ``queue`` the known queues are searched (``find_queue``): give it for a queue that is
        not known (one no live worker consumes)."""
        check_name("task id", task_id)
        queue = queue or await self.find_queue(task_id)
        if queue is None:
            return None
        async with self._rt() as rt:
            stored = await rt.broker.listing.stored(queue, task_id)
            state = await rt.results.get_state(queue, task_id)
            progress = await rt.backend.get_progress(queue, task_id)
        if stored is None and state is None:
            return None
        return _task_info(task_id, queue, stored, state, progress)

    async def snapshot(self) -> Snapshot:
        """Queues, workers and periodic entries at once: what ``vecna-async inspect`` shows."""
        async with self._rt() as rt:
            now, workers = await _registry(rt)
            queues = await _counted(rt, await self._names(rt, workers))
            return Snapshot(queues, workers, await self.periodic(), now)

    # -- actions -------------------------------------------------------------------------------
    async def requeue_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back to ready (all when ``ids`` is None, a page at a time); returns
        how many went back."""
        async with self._rt() as rt:
            return await rt.broker.requeue_dead_letters(queue, ids)

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters for good (all when ``ids`` is None); returns how many."""
        async with self._rt() as rt:
            return await rt.broker.purge_dead_letters(queue, ids)

    async def cancel_delayed(self, queue: str, task_id: str) -> bool:
        """Cancel a task of ``queue`` that waits (delayed, ready, parked or held by a limit): it
        never runs and its state becomes CANCELED (``server.cancel_delayed_task``). False if no
        such message waits there: it started, finished, is a dead letter or is unknown. (Unlike
        ``cancel_delayed_task``, an id not in the queue is not canceled ahead: a mistyped id
        must not leave a tombstone behind.)"""
        async with self._rt() as rt:
            stored = await rt.broker.listing.stored(queue, task_id)
        if stored is None or stored.place not in WAITING:
            return False
        return await self._server.cancel_delayed_task(task_id, queue=queue)

    async def cancel_periodic(self, code: str) -> bool:
        """Stop a periodic entry (``server.cancel_periodic_task``); False if no such code."""
        return await self._server.cancel_periodic_task(code)


async def _registry(rt: Runtime) -> tuple[datetime, list[WorkerInfo]]:
    """Redis's time and the live workers."""
    return await registered_workers(rt.broker_clients.main, rt.keys, rt.broker.where)


async def _counted(rt: Runtime, names: list[str]) -> list[QueueInfo]:
    counts = await rt.broker.listing.counts(names)
    return [QueueInfo(name, *c) for name, c in zip(names, counts, strict=True)]


def task_names(d: PeriodicDefinition) -> list[str]:
    """The task names a definition sends: its tasks (a chain's links in order), then a chord's
    callback."""
    out = []
    for head in d.tasks:
        link: TaskMessage | None = head
        while link is not None:
            out.append(link.name)
            link = link.chain_next
    if d.callback is not None:
        out.append(d.callback.name)
    return out


def _periodic(
    d: PeriodicDefinition, upcoming: dict[str, int], last: dict[str, int]
) -> PeriodicInfo:
    callback = [d.callback] if d.callback is not None else []
    return PeriodicInfo(
        d.code,
        d.spec,
        d.tz,
        d.kind,
        task_names(d),
        next_fire=utc(upcoming.get(d.code)),
        last_fire=utc(last.get(d.code)),
        queues=sorted({m.queue for m in walk([*d.tasks, *callback])}),
    )


def _quarantined(q: QuarantinedPeriodic, last: datetime | None) -> PeriodicInfo:
    """A quarantined definition with what can still be read of it (a hand edit may have left
    anything there)."""
    try:
        fields = msgspec.json.decode(q.raw)
    except msgspec.DecodeError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}

    def field(name: str) -> str:
        value = fields.get(name, "")
        return value if isinstance(value, str) else ""

    tasks = fields.get("tasks")
    tasks = tasks if isinstance(tasks, list) else []
    names = [t["name"] for t in tasks if isinstance(t, dict) and isinstance(t.get("name"), str)]
    return PeriodicInfo(
        q.code, field("spec"), field("tz"), field("kind"), names, None, last, q.reason
    )


def _task_info(
    task_id: str, queue: str, stored: Stored | None, state: TaskState | None, progress: Any
) -> TaskInfo:
    msg: TaskMessage | None = None
    if stored is not None:
        try:
            msg = decode_task(stored.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            msg = None  # (why it is a dead letter, likely) its record still tells the rest
    name = stored.name if stored is not None else (state.task_name if state else "")
    success = state is not None and state.state is State.SUCCESS
    return TaskInfo(
        id=task_id,
        queue=queue,
        name=name,
        state=state.state if state is not None else State.PENDING,
        place=stored.place if stored is not None else "",
        args=list(msg.args) if msg is not None else None,
        kwargs=dict(msg.kwargs) if msg is not None else None,
        result=state.value() if success and state is not None else None,
        error=state.error if state is not None else "",
        traceback=state.traceback if state is not None else "",
        attempt=msg.tries + 1 if msg is not None else 0,
        retry_count=msg.retry_count if msg is not None else 0,
        deliveries=stored.deliveries if stored is not None else 0,
        eta=_eta(stored, msg),
        started=utc(stored.claimed_ms) if stored is not None else None,
        worker=stored.worker if stored is not None else "",
        lease_deadline=utc(stored.deadline_ms) if stored is not None else None,
        dead_reason=stored.dead_reason if stored is not None else "",
        dead_at=utc(stored.dead_at_ms) if stored is not None else None,
        progress=msgspec.json.decode(progress) if progress is not None else None,
    )


def _eta(stored: Stored | None, msg: TaskMessage | None) -> datetime | None:
    """When a waiting task is due: its place in the delayed set (an ETA or a retry's time),
    else the ETA it was sent with."""
    if stored is not None and stored.due_ms is not None:
        return utc(stored.due_ms)
    return utc(msg.eta_ms) if msg is not None and msg.eta_ms else None
