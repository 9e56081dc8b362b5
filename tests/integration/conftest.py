"""Plain redis clients on the test's Redis or memory:// store, for looking at keys directly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.support.backends import plain_client


@pytest.fixture
async def rc(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """Replies as bytes: records, tokens and bodies exactly as stored."""
    client = plain_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def rc_text(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """Replies decoded as str; a large pool for tasks that write markers concurrently."""
    client = plain_client(redis_url, decode_responses=True, max_connections=1000)
    try:
        yield client
    finally:
        await client.aclose()
