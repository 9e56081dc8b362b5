"""Stops the runs of tasks canceled while running (``server.cancel_task``).

The cancel script marks the task canceled in Redis and publishes ``"<queue> <id>"`` on the
cancel channel; every worker listens on one pub/sub connection and stops its runs of that task
at once (pushed, not polled). A stopped run hands its message back, and the settle takes it as
canceled. A notice can arrive before the claim reply that hands this worker the task (the
cancel came between the claim in Redis and the reply): notices are kept for ``RECENT_SECONDS``
and a delivery noticed as canceled is not run at all.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from vecna_async.broker.base import Claimed
from vecna_async.subscription import subscribe_forever
from vecna_async.worker.heartbeat import InFlight

if TYPE_CHECKING:
    from vecna_async.connection import AnyRedis

log = logging.getLogger("vecna_async.worker")
RECENT_SECONDS = 60.0


class CancelListener:
    """One worker's subscription to the cancel channel."""

    def __init__(self, client: AnyRedis, channel: str, in_flight: InFlight) -> None:
        self._client = client
        self._channel = channel
        self._in_flight = in_flight
        self._recent: dict[tuple[str, str], float] = {}

    def canceled(self, c: Claimed) -> bool:
        """Whether a notice for this delivery's task came before the delivery started."""
        return (c.queue, c.id) in self._recent

    def _noted(self, queue: str, task_id: str) -> None:
        now = time.monotonic()
        self._recent[(queue, task_id)] = now
        for key, at in list(self._recent.items()):
            if now - at > RECENT_SECONDS:
                del self._recent[key]
        stopped = self._in_flight.stop_task(queue, task_id)
        if stopped:
            fields = {"task_id": task_id, "queue": queue}
            log.info("task %s in %r was canceled: stopping it", task_id, queue, extra=fields)

    async def run(self) -> None:
        def noted(data: bytes) -> None:
            queue, _, task_id = data.decode().partition(" ")
            self._noted(queue, task_id)

        what = "cancel notices: subscription"
        await subscribe_forever(
            self._client, self._channel, noted, log=log, what=what, backoff=(0.1, 5.0)
        )
