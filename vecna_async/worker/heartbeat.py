"""Keeps the leases of running (and not yet settled) deliveries alive.

Everything is keyed by delivery (the lease token), never by task id: after a stall the same id
can be delivered to this worker twice, and each delivery holds its own slot until its own
settle lands. A delivery whose lease the heartbeat finds lost (it expired and the message went
to another delivery) is stopped: its outcome would be fenced off anyway, and the other copy is
the one that counts. So is one whose message no longer exists in Redis at all (reported
``gone:<token>``: Redis lost its data), whose outcome could not be recorded anywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import anyio

from vecna_async.broker.base import Broker, Claimed
from vecna_async.redis_errors import is_transient

log = logging.getLogger("vecna_async.worker")
GONE = "gone:"
"""Marks a token in a settle or renewal reply whose message no longer exists in Redis."""
CANCELED = "canceled:"
"""Marks a token in a settle reply whose task was canceled while it ran (``lua/settle.lua``)."""
GONE_REASON = (
    "the message no longer exists in Redis (was Redis restarted without persistence? "
    "see README 'Delivery guarantees')"
)


def split_gone(tokens: list[str]) -> tuple[list[str], list[str]]:
    """A renewal's lost tokens as (lost: the lease went to another delivery, gone: the message
    no longer exists), each a plain token."""
    lost, gone, _ = split_reply(tokens)
    return lost, gone


def split_reply(tokens: list[str]) -> tuple[list[str], list[str], set[str]]:
    """A settle's reply as (lost, gone, canceled: the task was canceled while it ran), each a
    plain token, in one pass."""
    lost: list[str] = []
    gone: list[str] = []
    canceled: set[str] = set()
    for token in tokens:
        if token.startswith(GONE):
            gone.append(token[len(GONE) :])
        elif token.startswith(CANCELED):
            canceled.add(token[len(CANCELED) :])
        else:
            lost.append(token)
    return lost, gone, canceled


class InFlight:
    """Deliveries this worker holds a lease on, from claim until their settle went through."""

    def __init__(self) -> None:
        self.by_token: dict[str, Claimed] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._empty = anyio.Event()
        self._empty.set()

    def add(self, c: Claimed, run: asyncio.Task[None]) -> None:
        self.by_token[c.token] = c
        self._runs[c.token] = run
        if self._empty.is_set():
            self._empty = anyio.Event()

    def forget(self, tokens: list[str]) -> int:
        """Drop settled deliveries; returns how many were held here (each frees a slot)."""
        held = 0
        for token in tokens:
            if self.by_token.pop(token, None) is not None:
                self._runs.pop(token, None)
                held += 1
        if not self.by_token:
            self._empty.set()
        return held

    def stop(self, tokens: list[str]) -> int:
        """Cancel the runs of deliveries whose lease is lost; returns how many were running."""
        stopped = 0
        for token in tokens:
            run = self._runs.get(token)
            if run is not None and not run.done():
                run.cancel()
                stopped += 1
        return stopped

    def stop_task(self, queue: str, task_id: str) -> int:
        """Cancel the runs of every delivery of this task held here (it was canceled)."""
        tokens = [t for t, c in self.by_token.items() if c.id == task_id and c.queue == queue]
        return self.stop(tokens)

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self.by_token)


class Heartbeat:
    """Every ``interval`` seconds, one call per queue renews every lease this worker holds."""

    def __init__(self, broker: Broker, in_flight: InFlight, interval: float) -> None:
        self._broker = broker
        self._in_flight = in_flight
        self._interval = interval

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            await self.beat()

    async def beat(self) -> None:
        by_queue: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for c in list(self._in_flight.by_token.values()):
            by_queue[c.queue].append((c.id, c.token))
        for queue, leases in by_queue.items():
            try:
                lost = await self._broker.extend_leases(queue, leases)
            except Exception as exc:  # an outage or an error reply: the next beat tries again
                if is_transient(exc):
                    log.warning("cannot renew %d lease(s) in %r: %s", len(leases), queue, exc)
                else:
                    log.exception("renewing %d lease(s) in %r failed", len(leases), queue)
                continue
            lost, gone = split_gone(lost)
            lost = [t for t in lost if t in self._in_flight.by_token]  # not settled meanwhile
            gone = [t for t in gone if t in self._in_flight.by_token]
            if lost:
                stopped = self._in_flight.stop(lost)
                log.warning(
                    "lost the lease of %d message(s) in %r (it expired and the message was "
                    "delivered again); stopped %d run(s) of this worker whose outcome would "
                    "not count",
                    len(lost),
                    queue,
                    stopped,
                )
            if gone:
                stopped = self._in_flight.stop(gone)
                log.warning(
                    "lost the lease of %d message(s) in %r: %s; stopped %d run(s) of this "
                    "worker whose outcome could not be recorded",
                    len(gone),
                    queue,
                    GONE_REASON,
                    stopped,
                )
