"""Helpers for tests that drive vecna_async: run a worker for a block, wait for a condition."""

from __future__ import annotations

import os
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


def clean_env() -> dict[str, str]:
    """This process's environment without any ``VECNA_`` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VECNA_")}


def worker_env(config: Config) -> dict[str, str]:
    """The environment in which ``Config.from_env()`` (a worker subprocess, e.g. ``tests/apps``)
    equals ``config``."""
    r = config.redis
    env = clean_env()
    env.update(
        VECNA_BROKER=config.broker,
        VECNA_DEFAULT_QUEUE=config.default_queue,
        VECNA_RESULTS_EXPIRE_IN=str(config.results_expire_in),
        VECNA_SHUTDOWN_GRACE=str(config.shutdown_grace),
        VECNA_REDIS_KEY_PREFIX=r.key_prefix,
        VECNA_REDIS_LEASE_TIMEOUT=str(r.lease_timeout),
        VECNA_REDIS_HEARTBEAT_INTERVAL=str(r.heartbeat_interval),
        VECNA_REDIS_MAX_DELIVERIES=str(r.max_deliveries),
        VECNA_REDIS_NORMAL_TASKS_POLL_PERIOD=str(r.normal_tasks_poll_period),
        VECNA_REDIS_DELAYED_TASKS_POLL_PERIOD=str(r.delayed_tasks_poll_period),
    )
    if config.result_backend:
        env["VECNA_RESULT_BACKEND"] = config.result_backend
    return env
