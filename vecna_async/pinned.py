"""``PinnedConnection``: one Redis connection kept by a hot caller, and our own RESP write.

The only module that leans on redis-py's internals (a connection's ``_writer``, its
``read_response``): every such use has a fallback to redis-py's public path, and
``tests/unit/test_resp.py`` and ``tests/integration/test_pinned_connections.py`` fail when
redis-py changes under it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vecna_async.connection import AnyRedis

PIN_MIN_POOL = 16
"""Smallest pool cap at which the hot callers keep a connection each."""


class PinnedConnection:
    """One connection kept by a caller that sends one command at a time: a worker's claim loop,
    its idle wait (on the blocking pool), its flusher, the send coalescer.

    redis-py spends about 80 us per command checking a connection out of its pool, health-checking
    it and putting it back; this skips that. Any failure drops the connection; a dropped or stale
    one is replaced and the command sent once more (every vecna script is safe to run twice). A
    second caller arriving while a command is in flight, a Redis Cluster, a pool capped below
    ``PIN_MIN_POOL`` connections (those kept aside could starve the others) or an in-process
    memory:// client takes the ordinary pool path, so sharing one is never unsafe, only slower.

    The connection stays in its pool's in-use set, so a Sentinel switch (``failover.py``)
    disconnects it with the others; the next command reconnects, to the new master. A
    ``READONLY`` reply from a Sentinel master counts as a dropped connection (redis-py raises
    ``ConnectionError``), so it is sent once more on a fresh connection, never repeated on the
    same one. ``execute_many`` sends several commands in one write (a script and its ``WAIT``).
    """

    def __init__(self, client: AnyRedis) -> None:
        self._client = client
        self._conn: Any = None
        self._busy = False
        cap = getattr(getattr(client, "connection_pool", None), "max_connections", 0) or 0
        # memory:// clients (vecna_async.memory) say they have no socket to pin
        pinnable = getattr(client, "pinnable", True)
        self._pinned = pinnable and not isinstance(client, RedisCluster) and cap >= PIN_MIN_POOL

    async def execute(self, *args: Any) -> Any:
        """Run one command and return its reply (an error reply raises)."""
        if self._busy or not self._pinned:
            return await self._client.execute_command(*args)
        (reply,) = await self._on_pinned([args])
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_many(self, *commands: tuple[Any, ...], key: str = "") -> list[Any]:
        """Send ``commands`` back to back on one connection and read every reply: one round
        trip. An error reply comes back in place as its exception (``ResponseError``), it is
        not raised. Not pinned (or busy): ``on_one_connection`` on the pool (``key`` routes
        it on a Cluster)."""
        if self._busy or not self._pinned:
            return await on_one_connection(self._client, commands, key=key)
        return await self._on_pinned(commands)

    async def _on_pinned(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        self._busy = True
        try:
            try:
                return await self._send(commands)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return await self._send(commands)  # a fresh connection, once
        finally:
            self._busy = False

    async def _send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        if self._conn is None:
            self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        try:
            await _write(conn, commands)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # an error reply: read on, the next one follows
                    replies.append(exc)
            return replies
        except BaseException:
            # Cancelled or broken mid-command: its reply may still come; never reuse it.
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.disconnect()
                await pool.release(conn)
            raise

    @property
    def client(self) -> AnyRedis:
        """The client (pool) this connection comes from."""
        return self._client

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and isinstance(self._client, Redis):
            with contextlib.suppress(Exception):
                await self._client.connection_pool.release(conn)


async def _write(conn: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    """Write commands on a connected connection in one write, without redis-py's per-write
    ``wait_for`` (a Task per command, ~15 us): the kernel normally takes them at once, and only
    a write it could not take waits, under the socket timeout. Anything unexpected (not yet
    connected, a redis-py without ``_writer``) takes redis-py's own path."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected or writer.transport.is_closing():
        await conn.send_packed_command(conn.pack_commands(commands))
        return
    await conn.check_health()  # a PING only after max_idle_timeout unused, as redis-py does
    writer.write(b"".join(_pack(args) for args in commands))
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(conn.socket_timeout):
            await writer.drain()


async def on_one_connection(
    client: AnyRedis, commands: Sequence[tuple[Any, ...]], *, key: str = ""
) -> list[Any]:
    """Run ``commands`` on one connection, back to back, and return every reply; an error
    reply comes back in place as its exception. A ``Redis`` uses a non-transactional pipeline
    (redis-py retries it whole after a dropped connection); a ``RedisCluster`` the connection
    of the node that owns ``key`` (one MOVED or connection failure refreshes the slot map
    and tries once more)."""
    if isinstance(client, RedisCluster):
        return await _on_cluster_node(client, commands, key)
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return list(await pipe.execute(raise_on_error=False))


async def _on_cluster_node(
    client: RedisCluster, commands: Sequence[tuple[Any, ...]], key: str
) -> list[Any]:
    if not key:
        raise ValueError("on Redis Cluster, commands on one connection need a key to route by")
    await client.initialize()
    for attempt in (1, 2):
        node = client.get_node_from_key(key)
        assert node is not None
        stack = [PipelineCommand(i, *args) for i, args in enumerate(commands)]
        try:
            await node.execute_pipeline(stack)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if attempt == 2:
                raise
            await client.nodes_manager.initialize()
            continue
        replies = [cmd.result for cmd in stack]
        moved = replies[0] if isinstance(replies[0], MovedError) else None
        if moved is None or attempt == 2:
            return replies
        await client.nodes_manager.move_slot(moved)
    raise AssertionError("unreachable")


def describe_client(client: AnyRedis | PinnedConnection, key: str = "") -> str:
    """Where ``client``'s commands go (``host:port``, the socket path, or for a Cluster the
    node that owns ``key``), for error messages."""
    if isinstance(client, PinnedConnection):
        client = client.client
    if isinstance(client, RedisCluster):
        with contextlib.suppress(Exception):
            node = client.get_node_from_key(key)
            if node is not None:
                return str(node.name)
        return ",".join(str(node.name) for node in client.get_nodes()) or "a Redis Cluster"
    pool = client.connection_pool
    master = getattr(pool, "master_address", None)
    if master:
        return f"{master[0]}:{master[1]}"
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP, as redis-py's ``pack_command`` makes it for our arguments (str, bytes,
    int, float; never bool), in a third of its time."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = repr(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
