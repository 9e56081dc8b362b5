"""A Server for worker subprocesses started by the delivery and CLI tests.

Configured from the environment (``VECNA_BROKER``, ``VECNA_REDIS_KEY_PREFIX``, lease and grace
settings ...). The tasks leave markers in Redis, under ``<key prefix>:app:``, through a plain
client of their own, so a test can see what ran where even after the worker was killed:

* ``<prefix>:app:started`` / ``<prefix>:app:finished``: HASH ``i`` -> how often ``slow(i)``
  started / finished;
* ``<prefix>:app:pids``: SET of the worker pids that ran a ``slow`` or ``whoami`` task;
* ``<prefix>:app:crashes``: STR how often ``crash`` ran;
* ``<prefix>:app:running`` / ``<prefix>:app:max_running``: STR how many ``overlap`` tasks run
  right now / the most that ever ran at once.
"""

from __future__ import annotations

import os

import anyio
import redis.asyncio as aioredis

from vecna_async import Config, Server

server = Server(Config.from_env())

_client: aioredis.Redis | None = None


def marker_key(name: str) -> str:
    """The key of one marker (see the module docstring); the tests build the same names."""
    return f"{server.config.redis.key_prefix}:app:{name}"


def _markers() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ.get("VECNA_BROKER", server.config.broker))
    return _client


@server.task(name="slow")
async def slow(i: int, seconds: float) -> int:
    """Record a start, sleep ``seconds``, record the finish; returns ``i``."""
    client = _markers()
    await client.hincrby(marker_key("started"), str(i), 1)
    await client.sadd(marker_key("pids"), os.getpid())
    await anyio.sleep(seconds)
    await client.hincrby(marker_key("finished"), str(i), 1)
    return i


@server.task(name="whoami")
async def whoami(seconds: float) -> int:
    """Sleep ``seconds`` and return the pid of the worker process that ran it."""
    await _markers().sadd(marker_key("pids"), os.getpid())
    await anyio.sleep(seconds)
    return os.getpid()


@server.task(name="crash")
async def crash() -> None:
    """Kill the worker process running it, as a segfaulting extension would."""
    await _markers().incr(marker_key("crashes"))
    os._exit(1)


@server.task(name="hang")
async def hang() -> None:
    """Never return."""
    await anyio.sleep_forever()


_COUNT_UP = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or 0) then
  redis.call('SET', KEYS[2], n)
end
return n
"""


@server.task(name="overlap")
async def overlap(seconds: float) -> None:
    """Run ``seconds`` while counting how many ``overlap`` tasks run at once."""
    client = _markers()
    await client.eval(_COUNT_UP, 2, marker_key("running"), marker_key("max_running"))
    await anyio.sleep(seconds)
    await client.decr(marker_key("running"))


@server.task(name="limited", concurrency_limit=1)
async def limited(i: int, seconds: float) -> int:
    """At most one at a time across every worker. Records its starts like ``slow``; sleeps
    ``seconds`` on its first start only (a redelivery after a crash returns at once)."""
    client = _markers()
    if await client.hincrby(marker_key("limited_started"), str(i), 1) == 1:
        await anyio.sleep(seconds)
    return i
