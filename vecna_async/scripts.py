"""Lua scripts: read once from ``vecna_async/lua/``, run by SHA, reloaded when Redis lost them.

Every script gets ``_lib.lua`` prepended. Redis may forget scripts (a restart, a failover, SCRIPT
FLUSH); after a ``NOSCRIPT`` reply (the script did not run) the call is made again with EVAL and the
source, which runs it and caches it for the next EVALSHA. Each script is also idempotent for a
repeated call (request ids, lease tokens), which makes redis-py's own retry after a timeout safe.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from vecna_async.connection import AnyRedis, PinnedConnection

SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "settle",
    "heartbeat",
    "promote",
    "watch",
    "requeue_dead",
    "cancel",
    "periodic_quarantine",
)


class Script:
    """One Lua script with its SHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: AnyRedis | PinnedConnection, keys: list[str], args: list[Any]
    ) -> Any:
        run = client.execute if isinstance(client, PinnedConnection) else client.execute_command
        try:
            return await run("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # EVAL runs the source and caches it in one step, so a SCRIPT FLUSH between a reload
            # and a repeated EVALSHA cannot fail the call. On a Cluster both route by the key.
            return await run("EVAL", self.source, len(keys), *keys, *args)


@cache
def script(name: str) -> Script:
    """The named script (``claim``, ``settle`` ...), read from the package once."""
    lua = resources.files("vecna_async") / "lua"
    lib = (lua / "_lib.lua").read_text()
    body = (lua / f"{name}.lua").read_text()
    return Script(name, f"{lib}\n-- {name}.lua\n{body}")
