"""``Context``: what a task may know about its own run, and the worker's shared resources.

A task asks for it by declaring a parameter annotated ``Context`` (any name, any position); the
worker fills it in, and ``send()``/``signature()`` of the task's typed handle leave it out::

    @server.task(name="fetch", timeout=10.0, retry_count=3)
    async def fetch(ctx: Context, url: str) -> int:
        await ctx.report_progress({"stage": "downloading"})
        return (await ctx.state["http"].get(url)).status_code
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ProgressReporter = Callable[[Any], Awaitable[None]]


async def discard_progress(value: Any) -> None:
    """Progress reported outside a worker (a task called directly) goes nowhere."""


@dataclass(slots=True)
class Context:
    """The run of one task, as its worker sees it.

    ``task_id``, ``name``, ``queue`` and ``headers`` are the message's; ``attempt`` counts the
    runs of this message (1 on the first, +1 on every retry, automatic or ``RetryTaskLater``;
    a redelivery after a crash repeats an attempt); ``eta`` is when it was due (None if sent
    without one); ``worker`` is the worker's name; ``state`` the worker's resources, opened by
    ``@server.on_worker_startup`` hooks and shared by every task of that worker process.
    """

    task_id: str
    name: str
    attempt: int = 1
    queue: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    worker: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    _progress: ProgressReporter = discard_progress

    async def report_progress(self, value: Any) -> None:
        """Store ``value`` (anything JSON can carry) as the task's latest progress and push it
        to whoever waits on ``AsyncResult.progress_updates()``."""
        await self._progress(value)


ResourceHook = Callable[[dict[str, Any]], Awaitable[None]]
"""An ``on_worker_startup``/``on_worker_shutdown`` hook: takes the worker's ``state`` dict."""


@dataclass(slots=True)
class WorkerHooks:
    """The hooks that open and close a worker's resources (``ctx.state``), in order."""

    startup: list[ResourceHook] = field(default_factory=list)
    shutdown: list[ResourceHook] = field(default_factory=list)
