"""Redis URLs and the redis.asyncio clients built from them.

Accepted URL forms (``Config.broker`` / ``Config.result_backend``)::

    redis://[[user:]password@]host[:port][/db]       redis://password@host is the seed's form
    rediss://...                                     the same over TLS (RedisConfig.tls_*)
    unix:///path/to/redis.sock[?db=0]
    redis+socket://[password@]/path/to/redis.sock[:/db]   the seed's socket form
    redis-sentinel://[password@]h1:p1,h2:p2[/db][?master_name=name]   or RedisConfig.master_name
    redis://[password@]h1:p1,h2:p2,h3:p3             a Redis Cluster (several hosts)
    memory://[name]                                  in this process, no Redis (vecna_async.memory)

Each Server opens two pools per Redis: ``main`` for ordinary commands and ``blocking`` for the
idle-worker wake-up (BLPOP) whose socket timeout must outlast the block.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff

from vecna_async.config import RedisConfig, mask_url
from vecna_async.exceptions import ConfigError
from vecna_async.failover import FollowingSentinelPool, SentinelWatcher

Kind = Literal["standalone", "unix", "sentinel", "cluster", "memory"]
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
    store: str = ""  # memory://<store>

    def describe(self) -> str:
        """Where this points, without the password (for error messages and logs)."""
        if self.kind == "memory":
            return f"memory://{self.store}"
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
        shown = mask_url(url)
        raise ConfigError(f"{field_name}: cannot use URL {shown!r}: {exc}") from None


def _parse(url: str, master_name: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL like redis://host:6379/0")
    if scheme == "memory":
        from vecna_async.memory import store_name

        return RedisTarget("memory", store=store_name(rest))
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


def with_credentials(target: RedisTarget, cfg: RedisConfig) -> RedisTarget:
    """The target with ``RedisConfig.username``/``password`` in place of the URL's own, where
    they are set (they come from a secret: the environment or a mounted file). memory:// has
    no credentials: they are ignored there."""
    if target.kind == "memory":
        return target
    username = cfg.username or target.username
    password = cfg.password or target.password
    if (username, password) == (target.username, target.password):
        return target
    return replace(target, username=username, password=password)


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
    if target.kind == "memory":
        from vecna_async.memory import open_memory_clients

        return open_memory_clients(target)
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


def connection_name(name: str) -> str:
    """``vecna:<name>`` as CLIENT SETNAME takes it (no spaces or newlines)."""
    return "vecna:" + "".join(c if c.isprintable() and not c.isspace() else "_" for c in name)


async def name_connections(clients: RedisClients, name: str) -> None:
    """Make every connection these pools open from now on introduce itself as ``name`` (redis-py
    sends ``CLIENT SETNAME`` when it connects), so ``CLIENT LIST`` shows whose it is; idle
    connections opened before are closed (they reconnect named when next used)."""
    for client in (clients.main, clients.blocking):
        if isinstance(client, RedisCluster):
            nodes = client.nodes_manager
            nodes.connection_kwargs["client_name"] = name
            for node in [*nodes.startup_nodes.values(), *nodes.nodes_cache.values()]:
                node.connection_kwargs["client_name"] = name
        else:
            client.connection_pool.connection_kwargs["client_name"] = name
            await client.connection_pool.disconnect(inuse_connections=False)
