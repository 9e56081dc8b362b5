"""Redis URLs and the redis.asyncio clients built from them.

Accepted URL forms (``Config.broker`` / ``Config.result_backend``)::

    redis://[[user:]password@]host[:port][/db]       redis://password@host is the seed's form
    rediss://...                                     the same over TLS (RedisConfig.tls_*)
    unix:///path/to/redis.sock[?db=0]
    redis+socket://[password@]/path/to/redis.sock[:/db]   the seed's socket form
    redis-sentinel://[password@]h1:p1,h2:p2[/db][?master_name=name]   or RedisConfig.master_name
    redis://[password@]h1:p1,h2:p2,h3:p3             a Redis Cluster (several hosts)

Each Server opens two pools per Redis: ``main`` for ordinary commands and ``blocking`` for the
idle-worker wake-up (BLPOP) whose socket timeout must outlast the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vecna_async.config import RedisConfig
from vecna_async.exceptions import ConfigError
from vecna_async.failover import FollowingSentinelPool, SentinelWatcher

Kind = Literal["standalone", "unix", "sentinel", "cluster"]
AnyRedis = Redis | RedisCluster
"""What the broker and backend talk to: one node (standalone, unix, sentinel) or a cluster."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL."""

    kind: Kind
    hosts: list[tuple[str, int]] = field(default_factory=list)
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    unix_path: str = ""
    master_name: str = ""

    def describe(self) -> str:
        """Where this points, without the password (for error messages and logs)."""
        if self.kind == "unix":
            return f"unix://{self.unix_path}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        scheme = {"sentinel": "redis-sentinel", "cluster": "redis"}.get(self.kind, "redis")
        return f"{scheme}{'s' if self.tls else ''}://{hosts}/{self.db}"


def parse_url(url: str, *, field_name: str = "broker", master_name: str = "") -> RedisTarget:
    """Parse one of the URL forms above; a bad URL raises ConfigError naming the field."""
    try:
        return _parse(url, master_name)
    except (ValueError, IndexError) as exc:
        shown = _mask(url)
        raise ConfigError(f"{field_name}: cannot use URL {shown!r}: {exc}") from None


def _parse(url: str, master_name: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL like redis://host:6379/0")
    if scheme == "memory":
        raise ValueError("memory:// is not available yet; run a redis-server (see the README)")
    if scheme == "unix":
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        return RedisTarget(
            "unix",
            unix_path=parts.path,
            db=int(query.get("db", ["0"])[0]),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
    if scheme == "redis+socket":
        auth, _, path = rest.rpartition("@")
        path, _, socket_db = path.partition(":/")
        if not path.startswith("/"):
            raise ValueError("expected redis+socket://[password@]/path/to/file.sock[:/db]")
        return RedisTarget(
            "unix", unix_path=path, db=int(socket_db or 0), password=unquote(auth) if auth else None
        )
    if scheme not in ("redis", "rediss", "redis-sentinel"):
        raise ValueError(f"unknown scheme {scheme!r}")
    auth, _, hostpart = rest.rpartition("@")
    hostpart, _, query_text = hostpart.partition("?")
    hostpart, _, db_part = hostpart.partition("/")
    username, password = _auth(auth)
    hosts = [_host_port(h) for h in hostpart.split(",") if h]
    if not hosts:
        raise ValueError("no host given")
    query = parse_qs(query_text)
    db = int(db_part or query.get("db", ["0"])[0] or 0)
    if db < 0:
        raise ValueError(f"database number {db} is negative")
    tls = scheme == "rediss"
    if scheme == "redis-sentinel":
        name = query.get("master_name", [master_name])[0]
        if not name:
            raise ValueError("a sentinel URL needs ?master_name=... or RedisConfig.master_name")
        return RedisTarget("sentinel", hosts, db, username, password, tls, master_name=name)
    if len(hosts) > 1:
        if db:
            raise ValueError("Redis Cluster has only database 0")
        return RedisTarget("cluster", hosts, 0, username, password, tls)
    return RedisTarget("standalone", hosts, db, username, password, tls)


def _auth(auth: str) -> tuple[str | None, str | None]:
    if not auth:
        return None, None
    user, colon, password = auth.partition(":")
    if not colon:  # the seed's redis://password@host form
        return None, unquote(user)
    return (unquote(user) or None), unquote(password)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [::1] or [::1]:6379
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port = int(port_text or 6379)
    if not host:
        raise ValueError(f"bad host {text!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def text(value: Any) -> str:
    """A Redis reply (bytes, since clients do not decode) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def raw(value: Any) -> bytes:
    """A Redis reply as bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


def _mask(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    auth, at, tail = rest.rpartition("@")
    return f"{scheme}{sep}***@{tail}" if at and auth else url


@dataclass
class RedisClients:
    """The pools a Server owns for one Redis: ``main`` and ``blocking`` (see module docstring),
    and for a Sentinel URL the ``watcher`` that moves both to a new master at once
    (``vecna_async.failover``)."""

    target: RedisTarget
    main: AnyRedis
    blocking: AnyRedis
    watcher: SentinelWatcher | None = None

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.close()
        for client in (self.main, self.blocking):
            await client.aclose()


def open_clients(target: RedisTarget, cfg: RedisConfig) -> RedisClients:
    """Build (not yet connect) the pools; redis.asyncio connects on the first command."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), cfg.retries)
    common: dict[str, Any] = {
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": cfg.connect_timeout,
        "retry": retry,
        "health_check_interval": cfg.max_idle_timeout,
    }
    if target.tls:
        common.update(_tls_kwargs(cfg))
    # BLPOP waits at most normal_tasks_poll_period; the socket must wait longer than that.
    block_timeout = cfg.normal_tasks_poll_period / 1000 + cfg.read_timeout
    if target.kind == "cluster":
        nodes = [ClusterNode(h, p) for h, p in target.hosts]
        max_conn = cfg.max_active or 2**31
        main = RedisCluster(
            startup_nodes=nodes, socket_timeout=cfg.read_timeout, max_connections=max_conn, **common
        )
        blocking = RedisCluster(
            startup_nodes=nodes, socket_timeout=block_timeout, max_connections=max_conn, **common
        )
        return RedisClients(target, main, blocking)
    if target.kind == "sentinel":
        return _sentinel_clients(target, cfg, common, block_timeout)
    return RedisClients(
        target,
        _single(target, cfg, common, cfg.read_timeout),
        _single(target, cfg, common, block_timeout),
    )


def _single(target: RedisTarget, cfg: RedisConfig, common: dict[str, Any], timeout: float) -> Redis:
    kwargs = dict(common, db=target.db, socket_timeout=timeout)
    if target.kind == "unix":
        kwargs["unix_socket_path"] = target.unix_path
    else:
        kwargs["host"], kwargs["port"] = target.hosts[0]
    max_conn = cfg.max_active or None
    if cfg.wait and max_conn:
        # Waits for a free connection instead of failing at max_active, as the seed's Wait does
        # (without a time limit, like the seed; redis-py's per-call timer also costs ~20 us).
        pool = _blocking_pool(target, kwargs, max_conn)
        return Redis(connection_pool=pool)
    return Redis(max_connections=max_conn, **kwargs)


def _blocking_pool(
    target: RedisTarget, kwargs: dict[str, Any], max_conn: int
) -> BlockingConnectionPool:
    from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

    conn_kwargs = dict(kwargs)
    conn_cls: type[Connection] | type[UnixDomainSocketConnection] = Connection
    if target.kind == "unix":
        conn_cls = UnixDomainSocketConnection
        conn_kwargs["path"] = conn_kwargs.pop("unix_socket_path")
    elif target.tls:
        conn_cls = SSLConnection
        conn_kwargs.pop("ssl", None)
    return BlockingConnectionPool(
        connection_class=conn_cls, max_connections=max_conn, timeout=None, **conn_kwargs
    )


def _sentinel_clients(
    target: RedisTarget, cfg: RedisConfig, common: dict[str, Any], block_timeout: float
) -> RedisClients:
    # A stalled sentinel must not hang a connect: its replies get the connect timeout too.
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": cfg.connect_timeout,
        "socket_timeout": cfg.connect_timeout,
    }
    if cfg.sentinel_password:
        sentinel_kwargs["password"] = cfg.sentinel_password
    if target.tls:
        sentinel_kwargs.update(_tls_kwargs(cfg))
    sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_kwargs, **common)  # type: ignore[no-untyped-call]
    watcher = SentinelWatcher(target.hosts, target.master_name, sentinel_kwargs)
    pools: dict[str, Any] = {"connection_pool_class": FollowingSentinelPool, "watcher": watcher}
    main = sentinel.master_for(
        target.master_name, db=target.db, socket_timeout=cfg.read_timeout, redis_class=Redis,
        **pools,
    )  # fmt: skip
    blocking = sentinel.master_for(
        target.master_name, db=target.db, socket_timeout=block_timeout, redis_class=Redis,
        **pools,
    )  # fmt: skip
    return RedisClients(target, main, blocking, watcher)


def _tls_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if cfg.tls_verify else ssl.CERT_NONE,
        "ssl_check_hostname": cfg.tls_verify,
    }
    if cfg.tls_ca_certs:
        kwargs["ssl_ca_certs"] = cfg.tls_ca_certs
    if cfg.tls_certfile:
        kwargs["ssl_certfile"] = cfg.tls_certfile
        kwargs["ssl_keyfile"] = cfg.tls_keyfile or None
    return kwargs


PIN_MIN_POOL = 16
"""Smallest pool cap at which the hot callers keep a connection each."""


class PinnedConnection:
    """One connection kept by a caller that sends one command at a time: a worker's claim loop,
    its idle wait (on the blocking pool), its flusher, the send coalescer.

    redis-py spends about 80 us per command checking a connection out of its pool, health-checking
    it and putting it back; this skips that. Any failure drops the connection; a dropped or stale
    one is replaced and the command sent once more (every vecna script is safe to run twice). A
    second caller arriving while a command is in flight, a Redis Cluster, or a pool capped below
    ``PIN_MIN_POOL`` connections (those kept aside could starve the others) takes the ordinary
    pool path, so sharing one is never unsafe, only slower.

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
        self._pinned = not isinstance(client, RedisCluster) and cap >= PIN_MIN_POOL

    async def execute(self, *args: Any) -> Any:
        if self._busy or not self._pinned:
            return await self._client.execute_command(*args)
        self._busy = True
        try:
            try:
                return await self._send(*args)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return await self._send(*args)  # a fresh connection, once
        finally:
            self._busy = False

    async def execute_many(self, *commands: tuple[Any, ...], key: str = "") -> list[Any]:
        """Send ``commands`` back to back on one connection and read every reply: one round
        trip. An error reply comes back in place as its exception (``ResponseError``), it is
        not raised. Not pinned (or busy): ``on_one_connection`` on the pool (``key`` routes
        it on a Cluster)."""
        if self._busy or not self._pinned:
            return await on_one_connection(self._client, commands, key=key)
        self._busy = True
        try:
            try:
                return await self._send_many(commands)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                return await self._send_many(commands)  # a fresh connection, once
        finally:
            self._busy = False

    async def _send_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        if self._conn is None:
            self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        try:
            await _write_many(conn, commands)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # read whole: the next reply follows
                    replies.append(exc)
            return replies
        except BaseException:
            self._conn = None
            with contextlib.suppress(Exception):
                await conn.disconnect()
                await pool.release(conn)
            raise

    async def _send(self, *args: Any) -> Any:
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        if self._conn is None:
            self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        conn = self._conn
        try:
            await _write(conn, args)
            return await conn.read_response()
        except ResponseError:
            raise  # an error reply: the connection itself is fine
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


async def _write(conn: Any, args: tuple[Any, ...]) -> None:
    """Write one command on a connected connection without redis-py's per-write ``wait_for``
    (a Task per command, ~15 us): the kernel normally takes the whole command at once, and only
    a write it could not take waits, under the socket timeout. Anything unexpected (not yet
    connected, a redis-py without ``_writer``) takes redis-py's own path."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected or writer.transport.is_closing():
        await conn.send_command(*args)
        return
    await conn.check_health()  # a PING only after max_idle_timeout unused, as redis-py does
    writer.write(_pack(args))
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(conn.socket_timeout):
            await writer.drain()


async def _write_many(conn: Any, commands: Sequence[tuple[Any, ...]]) -> None:
    """``_write`` for several commands in one write."""
    writer = getattr(conn, "_writer", None)
    if writer is None or not conn.is_connected or writer.transport.is_closing():
        await conn.send_packed_command(conn.pack_commands(commands))
        return
    await conn.check_health()
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
