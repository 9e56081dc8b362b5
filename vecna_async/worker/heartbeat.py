"""Keeps the leases of running (and not yet settled) messages alive."""

from __future__ import annotations

import logging
from collections import defaultdict

import anyio

from vecna_async.broker.base import Broker, Claimed
from vecna_async.exceptions import BrokerUnavailable

log = logging.getLogger("vecna_async.worker")


class InFlight:
    """Messages this worker holds a lease on, from claim until their settle went through."""

    def __init__(self) -> None:
        self.by_id: dict[str, Claimed] = {}
        self._empty = anyio.Event()
        self._empty.set()

    def add(self, c: Claimed) -> None:
        self.by_id[c.id] = c
        if self._empty.is_set():
            self._empty = anyio.Event()

    def forget(self, ids: list[str]) -> int:
        """Drop settled messages; returns how many were held here."""
        held = 0
        for i in ids:
            if self.by_id.pop(i, None) is not None:
                held += 1
        if not self.by_id:
            self._empty.set()
        return held

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self.by_id)


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
        for c in list(self._in_flight.by_id.values()):
            by_queue[c.queue].append((c.id, c.token))
        for queue, leases in by_queue.items():
            try:
                lost = await self._broker.extend_leases(queue, leases)
            except BrokerUnavailable as exc:
                log.warning("cannot renew %d lease(s) in %r: %s", len(leases), queue, exc)
                continue
            if lost:
                log.warning(
                    "lost the lease of %d running message(s) in %r (it expired; another worker "
                    "may run them too): %s",
                    len(lost),
                    queue,
                    ", ".join(lost[:5]),
                )
