"""The scheduler coroutine: moves due delayed entries (ETA tasks, retries) to their ready queues
and fires due periodic ticks (``periodic.py``).

It does not tick: after each pass it sleeps until the earliest due entry (by Redis's clock, so
schedulers on hosts with skewed clocks agree), and a publish on the ``sched`` channel wakes it early
when an earlier entry is added. ``RedisConfig.delayed_tasks_poll_period`` caps the sleep, a safety
net for a missed publish. Any number of schedulers may run: promotion is one atomic script per
batch, so they share the work and never duplicate it.

An embedded scheduler (``Server.scheduler()``) first writes the Server's declared schedules
(``@server.periodic``): in its first pass, and again in each next pass until that succeeded, so a
Redis unreachable at start holds up neither the app nor the delayed tasks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from vecna_async.broker.redis import RedisBroker
from vecna_async.redis_errors import is_transient
from vecna_async.scheduler.periodic import PeriodicStore
from vecna_async.subscription import subscribe_forever

if TYPE_CHECKING:
    from vecna_async.connection import AnyRedis

log = logging.getLogger("vecna_async.scheduler")
PROMOTE_BATCH = 1000
QUEUE_REFRESH_SECONDS = 5.0
QUEUE_PRUNE_SECONDS = 3600.0


class Scheduler:
    """Promotes due entries of every known queue; ``run`` until cancelled."""

    def __init__(
        self,
        broker: RedisBroker,
        periodic: PeriodicStore,
        client: AnyRedis,
        channel: str,
        queues: Iterable[str],
        max_sleep: float,
        *,
        declare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._declare = declare  # writes the declared schedules; None once done
        self._broker = broker
        self._periodic = periodic
        self._client = client
        self._channel = channel
        self._queues = set(queues)
        self._own_queues = set(queues)
        self._queues_pruned = 0.0
        self._max_sleep = max_sleep
        self._wake = anyio.Event()
        self._queues_refreshed = 0.0
        self.passes = 0

    @property
    def periodic(self) -> PeriodicStore:
        """The periodic definitions this scheduler fires (to list them, or the quarantined ones)."""
        return self._periodic

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            await self._loop()

    async def _loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                sleep = await self.run_once()
                backoff = 0.05
            except Exception as exc:  # an outage, or a bug: keep scheduling the rest
                if is_transient(exc):
                    log.warning("scheduler cannot reach Redis (%s); retry in %.2fs", exc, backoff)
                else:
                    log.exception("scheduler pass failed; retry in %.2fs", backoff)
                sleep, backoff = backoff, min(backoff * 2, 5.0)
            with anyio.move_on_after(sleep):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def run_once(self) -> float:
        """Fire due periodic ticks and promote due delayed entries of every queue; returns how
        long to sleep until the next of either.

        A failure of the periodic part is raised only after the promotion (the loop logs it and
        backs off): ETA tasks and retries never wait on a periodic definition.
        """
        self.passes += 1
        periodic_failure: Exception | None = None
        if self._declare is not None:
            try:
                await self._declare()
                self._declare = None
            except Exception as exc:  # the stored definitions still fire meanwhile
                periodic_failure = exc
        try:
            next_tick = await self._periodic.fire_due()
        except Exception as exc:
            periodic_failure, next_tick = exc, None
        if time.monotonic() - self._queues_pruned > QUEUE_PRUNE_SECONDS:
            self._queues_pruned = time.monotonic()
            self._queues -= set(await self._broker.queues.prune()) - self._own_queues
        if time.monotonic() - self._queues_refreshed > QUEUE_REFRESH_SECONDS:
            self._queues |= await self._broker.queues.all()
            self._queues_refreshed = time.monotonic()
        sleep = self._max_sleep if next_tick is None else min(self._max_sleep, next_tick)
        for queue in list(self._queues):
            while True:
                r = await self._broker.promote_due(queue, PROMOTE_BATCH)
                if r.moved < PROMOTE_BATCH:
                    break
            if r.next_due_ms >= 0:
                sleep = min(sleep, max(0.0, (r.next_due_ms - r.now_ms) / 1000))
        if periodic_failure is not None:
            raise periodic_failure
        return sleep

    async def _listen(self) -> None:
        """Wake the loop when an entry earlier than any known is added (see ``announce_due``)."""

        def announced(data: bytes) -> None:
            queue = data.split(b" ", 1)[0].decode()
            if queue != "*":  # "*": a periodic definition was added
                self._queues.add(queue)
            self._wake.set()

        what = "scheduler wake-up subscription"
        await subscribe_forever(
            self._client, self._channel, announced,
            log=log, what=what, backoff=(0.5, 0.5), on_lost=self._wake.set,
        )  # fmt: skip


@asynccontextmanager
async def running(sched: Scheduler) -> AsyncIterator[Scheduler]:
    """Run ``sched`` in the background while the block runs. An error the block raises comes out
    as itself: the task group would wrap it in an ExceptionGroup, which a plain ``except`` (a
    web app's lifespan) does not catch."""
    raised: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.run)
            try:
                yield sched
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        raised = group.exceptions[0]
    if raised is not None:
        raise raised  # outside the except block: not shown "during handling" of the group
