"""Concurrent sends go out together.

A web app sends tasks from many requests at once, one ``send_task`` each. The first send goes
out at once; while it is in flight, later ones wait, and then all of them go out in one enqueue
call (per queue). Idle, a send costs what it did; under load, one round trip carries many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from vecna_async.tasks.wire import Outgoing

Send = Callable[[Sequence[Outgoing]], Awaitable[None]]


class Coalescer:
    """Runs ``send`` for one caller at a time and batches the callers that arrive meanwhile."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._busy = False
        self._waiting: list[tuple[Sequence[Outgoing], asyncio.Future[None]]] = []

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if self._busy:
            fut = asyncio.get_running_loop().create_future()
            self._waiting.append((messages, fut))
            await fut
            return
        self._busy = True
        try:
            await self._send(messages)
        finally:
            if self._waiting:
                asyncio.get_running_loop().create_task(self._send_waiting())
            else:
                self._busy = False

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._send([m for messages, _ in batch for m in messages])
                except BaseException as exc:  # every caller of the batch gets the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._busy = False
