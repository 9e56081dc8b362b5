"""Plain clients on a test's broker, whichever backend it runs over (see tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from vecna_async import memory


def plain_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """A plain redis.asyncio client on ``url``: a Redis URL, or the memory:// store it names."""
    if url.startswith("memory://"):
        return memory.redis_client(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)
