"""A worker's resources: what its tasks share (``ctx.state``), opened by the Server's
``on_worker_startup`` hooks before anything is claimed and closed by its ``on_worker_shutdown``
hooks after the last task finished or was handed back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from vecna_async.context import WorkerHooks
from vecna_async.exceptions import WorkerStartupFailed

log = logging.getLogger("vecna_async.worker")


@asynccontextmanager
async def worker_resources(
    hooks: WorkerHooks, state: dict[str, Any], worker: str
) -> AsyncIterator[None]:
    """Open the resources (a startup hook that raises stops the worker with
    WorkerStartupFailed, after the shutdown hooks ran), run the block, close them."""
    try:
        for hook in hooks.startup:
            try:
                await hook(state)
            except Exception as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                raise WorkerStartupFailed(
                    f"worker {worker}: on_worker_startup hook {name} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        yield
    finally:
        with anyio.CancelScope(shield=True):
            for hook in hooks.shutdown:
                try:
                    await hook(state)
                except Exception:
                    log.exception("worker %s: an on_worker_shutdown hook failed", worker)
