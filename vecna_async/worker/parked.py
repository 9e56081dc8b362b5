"""Tells the operator about parked messages: a worker's claim parks, silently, every message of a
task name it does not know (for a worker of the same queue that knows it), and such a message
waits, PENDING, until one comes. Nothing else would ever say so.

One heartbeat interval after the worker starts (its first claims have parked what they will),
then every ``PARKED_CHECK_SECONDS``, the worker reads the parked counts of its queue and logs a
WARNING, once per task name, for each name it does not know, with how to fix it. (Once a minute
is plenty for a deployment mistake, and keeps the check off the connection pool that the
scheduler and the heartbeat share while Redis is down: redis-py's reconnects are slow then.)
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import anyio

from vecna_async.broker.listing import Listing

log = logging.getLogger("vecna_async.worker")
PARKED_CHECK_SECONDS = 60.0
"""How often a worker looks for parked messages after its first look."""


class ParkedWatch:
    """Warns once per unknown task name with messages parked in ``queue``."""

    def __init__(
        self,
        listing: Listing,
        queue: str,
        known: Collection[str],
        worker_name: str,
        first_check_after: float,
    ) -> None:
        self._listing = listing
        self._queue = queue
        self._known = frozenset(known)
        self._worker = worker_name
        self._first = first_check_after
        self.warned: set[str] = set()

    async def run(self) -> None:
        await anyio.sleep(self._first)
        while True:
            try:
                await self.check()
            except Exception as exc:  # Redis trouble: the claim loop says so already
                log.debug("cannot read the parked messages of %r (%s)", self._queue, exc)
            await anyio.sleep(max(self._first, PARKED_CHECK_SECONDS))

    async def check(self) -> None:
        """Warn about each unknown task name newly found parked."""
        counts = await self._listing.parked_counts(self._queue)
        for name, count in sorted(counts.items()):
            if name in self._known or name in self.warned:
                continue
            self.warned.add(name)
            log.warning(
                "worker %s: %d message(s) of task %r are parked in queue %r, PENDING until a "
                "worker of that queue registers %r (this one knows: %s). Register the task on "
                "a worker that consumes %r, or send it with "
                "ignore_when_task_not_registered=True to fail it instead of waiting",
                self._worker, count, name, self._queue, name,
                ", ".join(sorted(self._known)) or "no task", self._queue,
            )  # fmt: skip
