"""Claims messages for free slots and starts them.

A worker never holds more messages than it has slots (``concurrency``): it claims in one call as
many as are free (up to ``claim_batch``), so a busy worker does not hoard and an idle one fills up
in one round trip. A slot is free again once its outcome is settled, not when the task returns, so
leases held never exceed ``concurrency`` even when Redis is slow to take the outcomes. With
nothing to claim it blocks on the queue's wake-up list, a hint only: after
``normal_tasks_poll_period`` it looks again anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import anyio

from vecna_async.broker.base import Broker, Claimed
from vecna_async.exceptions import BrokerUnavailable
from vecna_async.worker.heartbeat import InFlight
from vecna_async.worker.taskset import TaskSet

log = logging.getLogger("vecna_async.worker")


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

    def stop(self) -> None:
        """Claim nothing more; interrupt an idle wait at once."""
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self, tasks: TaskSet) -> None:
        backoff = 0.05
        while not self._stopping:
            n = await self._take_slots()
            if self._stopping:
                self._give_back(n)
                break
            try:
                claimed = await self._broker.claim(self._queue, n, self._names)
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
            for c in claimed:
                self._in_flight.add(c)  # its slot comes back when its outcome is settled
                tasks.spawn(self._run_one(c))
            if len(claimed) < n:
                # Fewer than asked: the queue ran dry. Wait for a wake-up instead of claiming again
                # (the claim script leaves a wake-up token when it left messages behind).
                await self._idle(self._wait_for_work())

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

    async def _wait_for_work(self) -> None:
        try:
            await self._broker.wait_for_work(self._queue, self._poll)
        except BrokerUnavailable as exc:
            log.warning("wake-up wait on %r failed (%s)", self._queue, exc)
            await anyio.sleep(min(self._poll, 1.0))

    async def _idle(self, waiting: Awaitable[None]) -> None:
        with anyio.CancelScope() as scope:
            self._idle_scope = scope
            if self._stopping:
                scope.cancel()
            await waiting
        self._idle_scope = None
