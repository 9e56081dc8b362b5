"""Helpers for tests that drive vecna_async: run a worker for a block, wait for a condition."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec

from vecna_async import Config, Server, Worker

T = TypeVar("T")


@asynccontextmanager
async def running_worker(
    server: Server, concurrency: int = 10, **kwargs: object
) -> AsyncIterator[Worker]:
    """Launch a worker for the duration of the block; quit and await it afterwards."""
    worker = server.new_worker("test-worker", concurrency, **kwargs)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.launch)
        try:
            yield worker
        finally:
            worker.quit()


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout
    value = await check()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await anyio.sleep(interval)
        value = await check()
    return value


def tuned(config: Config, *, shutdown_grace: float | None = None, **redis: Any) -> Config:
    """``config`` with some RedisConfig fields (and the shutdown grace) replaced."""
    grace = config.shutdown_grace if shutdown_grace is None else shutdown_grace
    return msgspec.structs.replace(
        config, shutdown_grace=grace, redis=msgspec.structs.replace(config.redis, **redis)
    )
