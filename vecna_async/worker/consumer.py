"""Claims messages for free slots and starts them.

A worker never holds more messages than it has slots (``concurrency``): it claims in one call as
many as are free (up to ``claim_batch``), so a busy worker does not hoard and an idle one fills up
in one round trip. When a claim leaves slots free, it registers them: the next messages sent are
handed (leased) straight to this worker's inbox list, which it blocks on — one round trip from
enqueue to a running task. A slot is free again once its outcome is settled, not when the task
returns, so leases held never exceed ``concurrency`` even when Redis is slow to take the outcomes.
It also blocks on the queue's wake-up list, a hint only: after ``normal_tasks_poll_period`` it
claims again anyway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio

from vecna_async.broker.base import Broker, Claimed
from vecna_async.exceptions import BrokerUnavailable
from vecna_async.worker.heartbeat import InFlight
from vecna_async.worker.taskset import TaskSet

log = logging.getLogger("vecna_async.worker")
T = TypeVar("T")


class Consumer:
    """The claim loop of one worker on one queue."""

    def __init__(
        self,
        broker: Broker,
        queue: str,
        task_names: Sequence[str],
        slots: anyio.Semaphore,
        in_flight: InFlight,
        run_one: Callable[[Claimed], Coroutine[Any, Any, None]],
        on_dead: Callable[[list[Claimed]], None],
        claim_batch: int,
        poll_seconds: float,
    ) -> None:
        self._on_dead = on_dead
        self._broker = broker
        self._queue = queue
        self._names = list(task_names)
        self._slots = slots
        self._in_flight = in_flight
        self._run_one = run_one
        self._batch = claim_batch
        self._poll = poll_seconds
        self._stopping = False
        self._idle_scope: anyio.CancelScope | None = None
        self._session = uuid.uuid4().hex[:16]

    def stop(self) -> None:
        """Claim nothing more; interrupt an idle wait at once."""
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self, tasks: TaskSet) -> None:
        try:
            await self._run(tasks)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:  # idle no more: what was handed to this worker's inbox goes back to ready
                    await self._broker.leave(self._queue, self._session)
                except Exception as exc:
                    log.warning("could not end the idle registration on %r: %s", self._queue, exc)

    async def _run(self, tasks: TaskSet) -> None:
        backoff = 0.05
        while not self._stopping:
            n = await self._take_slots()
            if self._stopping:
                self._give_back(n)
                break
            try:
                claimed = await self._broker.claim(self._queue, n, self._names, self._session)
                backoff = 0.05
            except Exception as exc:  # an outage, or a bug: either way keep the worker alive
                self._give_back(n)
                if isinstance(exc, BrokerUnavailable):
                    log.warning(
                        "cannot claim from %r (%s); retry in %.2fs", self._queue, exc, backoff
                    )
                else:
                    log.exception("claim from %r failed; retry in %.2fs", self._queue, backoff)
                await self._idle(anyio.sleep(backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            dead = [c for c in claimed if c.dead_reason is not None]
            if dead:
                claimed = [c for c in claimed if c.dead_reason is None]
                self._on_dead(dead)
            self._give_back(n - len(claimed))
            self._start(claimed, tasks)
            registered = n - len(claimed)
            # Fewer than asked: the queue ran dry, and the claim registered the free slots, so
            # the next messages come straight to this worker's inbox; a wake-up or the poll
            # period sends it back to claiming.
            while registered > 0 and not self._stopping:
                handed = await self._idle(self._wait_for_work(tasks, registered))
                if not handed:
                    break
                registered -= handed

    def _start(self, claimed: list[Claimed], tasks: TaskSet) -> None:
        for c in claimed:
            self._in_flight.add(c)  # its slot comes back when its outcome is settled
            tasks.spawn(self._run_one(c))

    async def _take_slots(self) -> int:
        """Wait for one free slot, then take every other free one (up to the batch size)."""
        await self._slots.acquire()
        # Let tasks that finish in this same loop turn free their slots too: one claim for all.
        await anyio.lowlevel.checkpoint()
        n = 1
        while n < self._batch and self._slots.value > 0:
            self._slots.acquire_nowait()
            n += 1
        return n

    def _give_back(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _wait_for_work(self, tasks: TaskSet, registered: int) -> int:
        """Wait for handed-over messages (started here; returns how many) or a wake-up (0)."""
        try:
            handed = await self._broker.wait_for_work(
                self._queue, self._poll, self._session, registered
            )
        except BrokerUnavailable as exc:
            log.warning("wake-up wait on %r failed (%s)", self._queue, exc)
            await anyio.sleep(min(self._poll, 1.0))
            return 0
        for _ in handed:  # never more than the slots the claim registered as free
            self._slots.acquire_nowait()
        self._start(handed, tasks)
        return len(handed)

    async def _idle(self, waiting: Awaitable[T]) -> T | None:
        """Await ``waiting`` unless ``stop()`` interrupts it (then None)."""
        result = None
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self._stopping:
                scope.cancel()
            result = await waiting
        self._idle_scope = None
        return result
