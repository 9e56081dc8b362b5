"""Lua scripts: read once from ``vecna_async/lua/``, run by SHA, reloaded when Redis lost them.

Every script gets ``_lib.lua`` prepended. Redis may forget scripts (a restart, a failover, SCRIPT
FLUSH); after a ``NOSCRIPT`` reply (the script did not run) the call is made again with EVAL and the
source, which runs it and caches it for the next EVALSHA. Each script is also idempotent for a
repeated call (request ids, lease tokens), which makes redis-py's own retry after a timeout safe.

``wait=(replicas, seconds)`` makes a call durable beyond the master: Redis ``WAIT`` follows the
script on the same connection (WAIT counts the writes of its own connection only) and the call
raises ``BrokerRefused("NOREPLICAS ...")`` when fewer replicas acknowledged in time.
"""

from __future__ import annotations

import hashlib
import math
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from vecna_async.connection import AnyRedis
from vecna_async.exceptions import BrokerRefused
from vecna_async.pinned import PinnedConnection, describe_client, on_one_connection


class Script:
    """One Lua script with its SHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self,
        client: AnyRedis | PinnedConnection,
        keys: list[str],
        args: list[Any],
        wait: tuple[int, float] | None = None,
    ) -> Any:
        """Run the script and return its reply; a Redis error reply raises (``ResponseError``).

        ``wait=(replicas, timeout)``: then wait (Redis ``WAIT``, on the same connection, in the
        same round trip) until ``replicas`` replicas have the script's writes, at most
        ``timeout`` seconds. Fewer in time raises ``BrokerRefused`` with a ``NOREPLICAS`` reply
        (``transient``): the script DID run on the master, but its writes may be lost if the
        master fails over now. ``replicas`` 0 (or ``wait`` None) does not wait.
        """
        if wait is not None and wait[0] > 0:
            return await self._call_and_wait(client, keys, args, wait[0], wait[1])
        run = client.execute if isinstance(client, PinnedConnection) else client.execute_command
        try:
            return await run("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs the source and caches it in one step, so a SCRIPT FLUSH between a reload
            # and a repeated EVALSHA cannot fail the call. On a Cluster both route by the key.
            return await run("EVAL", self.source, len(keys), *keys, *args)

    async def _call_and_wait(
        self,
        client: AnyRedis | PinnedConnection,
        keys: list[str],
        args: list[Any],
        replicas: int,
        timeout: float,
    ) -> Any:
        wait = ("WAIT", replicas, max(1, math.ceil(timeout * 1000)))  # WAIT 0 blocks forever
        key = keys[0] if keys else ""
        call: tuple[Any, ...] = ("EVALSHA", self.sha, len(keys), *keys, *args)
        result, acked = await _one_connection(client, call, wait, key)
        if isinstance(result, NoScriptError):
            # Not run; the WAIT after it only waited for this connection's earlier writes.
            call = ("EVAL", self.source, len(keys), *keys, *args)
            result, acked = await _one_connection(client, call, wait, key)
        if isinstance(result, Exception):
            raise result
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < replicas:
            raise BrokerRefused(
                describe_client(client, key),
                f"NOREPLICAS {acked} of {replicas} replicas acknowledged within {timeout:g}s; "
                "the script ran on the master but may be lost if it fails over",
                f"to confirm {self.name}",
            )
        return result


async def _one_connection(
    client: AnyRedis | PinnedConnection, call: tuple[Any, ...], wait: tuple[Any, ...], key: str
) -> list[Any]:
    if isinstance(client, PinnedConnection):
        return await client.execute_many(call, wait, key=key)
    return await on_one_connection(client, [call, wait], key=key)


@cache
def script(name: str) -> Script:
    """The named script (``claim``, ``settle`` ...), read from the package once."""
    lua = resources.files("vecna_async") / "lua"
    lib = (lua / "_lib.lua").read_text()
    body = (lua / f"{name}.lua").read_text()
    return Script(name, f"{lib}\n-- {name}.lua\n{body}")
