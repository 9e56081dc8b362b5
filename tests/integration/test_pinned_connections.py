"""Pinned connections (the hot paths' own connection, see ``connection.PinnedConnection``).

A pinned connection must never hand a caller someone else's reply (a command cancelled in flight
leaves its reply on the socket), must survive the server dropping it, and must not starve a small
pool. All against the session's private redis-server.
"""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import running_worker, tuned
from vecna_async import Config, Server, Signature
from vecna_async.pinned import PIN_MIN_POOL, PinnedConnection

pytestmark = pytest.mark.anyio


async def add(a: int, b: int) -> int:
    return a + b


async def test_cancelled_command_never_leaks_its_reply(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    pinned = PinnedConnection(client)
    try:
        with anyio.move_on_after(0.1):
            await pinned.execute("BLPOP", "pinned:never", 1)  # reply (nil) comes after the cancel
        # Give the stale reply time to arrive on the old socket before the next command.
        await anyio.sleep(1.2)
        assert await pinned.execute("ECHO", "mine") == b"mine"
        assert await pinned.execute("ECHO", "again") == b"again"
    finally:
        await pinned.close()
        await client.aclose()


async def test_survives_the_server_killing_its_connection(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    pinned = PinnedConnection(client)
    try:
        await pinned.execute("CLIENT", "SETNAME", "pinned-victim")
        assert await pinned.execute("ECHO", "before") == b"before"
        killed = await admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        assert await pinned.execute("ECHO", "after") == b"after"
    finally:
        await pinned.close()
        await client.aclose()
        await admin.aclose()


async def test_small_pool_is_not_pinned_and_does_not_starve(config: Config) -> None:
    """With max_active below PIN_MIN_POOL the hot paths share the pool; sends, claims, settles,
    the result listener and the heartbeat all still get a connection."""
    small = tuned(config, max_active=3, wait=True)
    assert small.redis.max_active < PIN_MIN_POOL
    async with Server(small) as server:
        server.register_task("add", add)
        async with running_worker(server, concurrency=20):
            results = await server.send_tasks([Signature("add", args=[i, 1]) for i in range(200)])
            with anyio.fail_after(30):
                values = [await r.get(timeout=30) for r in results]
    assert values == [i + 1 for i in range(200)]


async def test_workers_recover_when_redis_drops_every_client(config: Config) -> None:
    """Pinned send, claim and settle connections reconnect after the server closes them."""
    async with Server(config) as server:
        server.register_task("add", add)
        async with running_worker(server, concurrency=10):
            first = await server.send_task(Signature("add", args=[1, 1]))
            assert await first.get(timeout=10) == 2
            admin = aioredis.Redis.from_url(config.broker)
            try:
                await admin.client_kill_filter(_type="normal", skipme=True)
            finally:
                await admin.aclose()
            results = await server.send_tasks([Signature("add", args=[i, 2]) for i in range(50)])
            with anyio.fail_after(30):
                values = [await r.get(timeout=30) for r in results]
    assert values == [i + 2 for i in range(50)]


async def test_health_checked_after_idle_like_the_pool(redis_url: str) -> None:
    """A pinned connection unused longer than ``health_check_interval`` (max_idle_timeout) is
    PINGed before its next command, as redis-py's pool does; a busy one is not."""
    client = aioredis.Redis.from_url(redis_url, health_check_interval=1)
    admin = aioredis.Redis.from_url(redis_url)
    pinned = PinnedConnection(client)

    async def pings() -> int:
        stats = await admin.info("commandstats")
        return int(stats.get("cmdstat_ping", {}).get("calls", 0))

    try:
        await pinned.execute("ECHO", "warm")
        before = await pings()
        for _ in range(20):
            await pinned.execute("ECHO", "busy")
        assert await pings() == before
        await anyio.sleep(1.2)  # the idle interval under test, not a synchronisation
        assert await pinned.execute("ECHO", "later") == b"later"
        assert await pings() == before + 1
    finally:
        await pinned.close()
        await client.aclose()
        await admin.aclose()
