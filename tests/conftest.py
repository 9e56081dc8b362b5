"""Fixtures: a private redis-server for the session, a fresh key space and Server per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.support.redis_procs import RedisProcess
from vecna_async import Config, RedisConfig, Server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def redis_url(redis_proc: RedisProcess) -> str:
    client = redis.Redis(host=redis_proc.host, port=redis_proc.port)
    client.flushall()
    client.close()
    return redis_proc.url


@pytest.fixture
def redis_config() -> RedisConfig:
    """Short leases and polls so delivery tests finish quickly; tests may override it."""
    return RedisConfig(
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        lease_timeout=2.0,
        heartbeat_interval=0.5,
        normal_tasks_poll_period=500,
        delayed_tasks_poll_period=500,
    )


@pytest.fixture
def config(redis_url: str, redis_config: RedisConfig) -> Config:
    return Config(broker=redis_url, results_expire_in=600, shutdown_grace=5.0, redis=redis_config)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    async with Server(config) as srv:
        yield srv
