"""Claims messages for free slots and starts them, from one queue or several in strict order.

A worker never holds more messages than it has slots (``concurrency``): it claims in one call as
many as are free (up to ``claim_batch``), so a busy worker does not hoard and an idle one fills up
in one round trip. A slot is free again once its outcome is settled, not when the task returns,
so leases held never exceed ``concurrency`` even when Redis is slow to take the outcomes.

With several queues, each round of claims goes to the first queue, then offers the slots it left
free to the next, and so on: a later queue gets a slot only while every earlier one is empty.

When the claims leave slots free (the queues ran dry), the worker blocks on the queues' wake-up
lists: every enqueue pushes a token there if none waits, and a claim that leaves work behind
pushes one for the next idle worker. A wake-up is only a hint: after ``normal_tasks_poll_period``
the worker claims again anyway. Every message reaches a worker through a claim, the one place
that leases, fences and reaps.

A claim whose reply took longer than half a lease (the event loop stalled, or the network did)
may hand out leases that expired on the way: those are renewed, and any found taken by another
delivery are dropped, before anything runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio

from vecna_async.broker.base import Broker, Claimed
from vecna_async.redis_errors import is_transient
from vecna_async.worker.heartbeat import GONE, InFlight
from vecna_async.worker.taskset import TaskSet

log = logging.getLogger("vecna_async.worker")
T = TypeVar("T")


class Consumer:
    """The claim loop of one worker on its queues."""

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str],
        task_names: Sequence[str],
        slots: anyio.Semaphore,
        in_flight: InFlight,
        run_one: Callable[[Claimed], Coroutine[Any, Any, None]],
        on_dead: Callable[[list[Claimed]], None],
        *,
        claim_batch: int,
        poll_seconds: float,
        lease_seconds: float,
        worker_name: str = "",
    ) -> None:
        self._on_dead = on_dead
        self._broker = broker
        self._queues = list(queues)
        self._names = list(task_names)
        self._slots = slots
        self._in_flight = in_flight
        self._run_one = run_one
        self._batch = claim_batch
        self._poll = poll_seconds
        self._lease = lease_seconds
        self._worker_name = worker_name  # recorded with each lease (inspection: who runs what)
        self._stopping = False
        self._idle_scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Claim nothing more; interrupt a wait (for a slot, for work, a back-off) at once."""
        self._stopping = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self, tasks: TaskSet) -> None:
        backoff = 0.05
        held = 0  # free slots kept through an idle wait: a wake-up claims with them at once
        try:
            while not self._stopping:
                if held:
                    n, held = held + self._take_free(self._batch - held), 0
                else:
                    taken = await self._idle(self._take_slots())
                    if taken is None or self._stopping:
                        self._give_back(taken or 0)
                        break
                    n = taken
                started = 0
                try:
                    for queue in self._queues:  # strict order: a later queue gets what is left
                        started += await self._claim(queue, n - started, tasks)
                        if started == n:
                            break
                    backoff = 0.05
                except Exception as exc:  # an outage, an error reply, a bug: keep going
                    self._give_back(n - started)
                    if is_transient(exc):
                        what = "cannot claim from %s (%s); retry in %.2fs"
                        log.warning(what, ", ".join(self._queues), exc, backoff)
                    else:
                        what = "claim from %s failed; retry in %.2fs"
                        log.exception(what, self._queues, backoff)
                    await self._idle(anyio.sleep(backoff))
                    backoff = min(backoff * 2, 5.0)
                    continue
                if started < n:  # the queues ran dry for us: wait for a wake-up or the poll
                    held = n - started
                    await self._idle(self._wait_for_work())
        finally:
            self._give_back(held)

    async def _claim(self, queue: str, n: int, tasks: TaskSet) -> int:
        """Claim up to ``n`` messages of ``queue`` and start them; returns how many started."""
        asked_at = time.monotonic()
        claimed = await self._broker.claim(queue, n, self._names, self._worker_name)
        if time.monotonic() - asked_at > self._lease / 2:
            claimed = await self._still_ours(queue, claimed)
        dead = [c for c in claimed if c.dead_reason is not None]
        if dead:
            claimed = [c for c in claimed if c.dead_reason is None]
            self._on_dead(dead)
        self._start(claimed, tasks)
        return len(claimed)

    async def _still_ours(self, queue: str, claimed: list[Claimed]) -> list[Claimed]:
        """Renew the leases of a slow claim's messages; keep those no other delivery took."""
        live = [c for c in claimed if c.dead_reason is None]
        renewed = await self._broker.extend_leases(queue, [(c.id, c.token) for c in live])
        lost = {token.removeprefix(GONE) for token in renewed}  # gone or not: not ours
        if lost:
            log.warning(
                "a claim from %r took over half a lease; %d of its message(s) had already "
                "gone to another delivery and are not run here",
                queue,
                len(lost),
            )
        return [c for c in claimed if c.token not in lost]

    def _start(self, claimed: list[Claimed], tasks: TaskSet) -> None:
        for c in claimed:
            # its slot comes back when its outcome is settled (Flusher -> InFlight.forget)
            self._in_flight.add(c, tasks.spawn(self._run_one(c)))

    async def _take_slots(self) -> int:
        """Wait for one free slot, then take every other free one (up to the batch size)."""
        await self._slots.acquire()
        try:
            # Let tasks that finish in this same loop turn free their slots too: one claim for all.
            await anyio.lowlevel.checkpoint()
        except BaseException:
            self._slots.release()
            raise
        return 1 + self._take_free(self._batch - 1)

    def _take_free(self, most: int) -> int:
        """Take the free slots there are now (at most ``most``), without waiting."""
        n = 0
        while n < most and self._slots.value > 0:
            self._slots.acquire_nowait()
            n += 1
        return n

    def _give_back(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    async def _wait_for_work(self) -> None:
        try:
            await self._broker.wait_for_work(self._queues, self._poll)
        except Exception as exc:
            log.warning("wake-up wait on %s failed (%s)", ", ".join(self._queues), exc)
            await anyio.sleep(min(self._poll, 1.0))

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
