"""Following Sentinel failovers at once.

redis-py's Sentinel pool asks the sentinels for the master only when it opens a connection, and
drops a connection only when a write to it is refused with ``READONLY``. After a planned
failover (``SENTINEL FAILOVER``) the old master keeps accepting writes until Sentinel demotes it,
about ten seconds later, and the writes made there in between are discarded when it resyncs as a
replica. So a Server follows the switch itself:

* ``SentinelWatcher`` subscribes to ``+switch-master`` on one sentinel at a time (the next one when
  the subscription drops, with back-off once all failed). When a switch names our master it drops
  every connection of the Server's pools at once -- idle, busy, pinned and pub/sub ones alike -- so
  the next command of each reconnects to the new master. After a (re)subscription it asks the
  sentinel for the master too, so a switch announced while it was not listening is not missed.
* ``FollowingSentinelPool`` / ``FollowingConnection`` (the pools of a ``redis-sentinel://`` URL)
  resolve the master on every socket connect, also the in-place reconnects redis-py makes after a
  dropped connection (its stock Sentinel connection reconnects those to the address it had, the old
  master), and never connect to an address a switch demoted: a sentinel that has not caught up
  yet cannot send us back there. A ``READONLY`` reply (a write reaching a demoted master) drops the
  connection and raises ``ConnectionError`` (redis-py's Sentinel connection does that), so the
  retry reconnects through the sentinels instead of repeating the write on the same replica.

The watcher starts with the first connection the pools open (it costs nothing per command) or
with ``Runtime.start_background()``, and stops with ``RedisClients.close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("vecna_async.failover")

Address = tuple[str, int]
SWITCH_CHANNEL = "+switch-master"


def address(host: Any, port: Any) -> Address:
    """``(host, port)`` as str and int, however Redis or redis-py spelled them."""
    return (host.decode() if isinstance(host, bytes) else str(host), int(port))


class SentinelWatcher:
    """Follows ``+switch-master`` for one master name; see the module docstring.

    ``master`` is the address the latest switch named (None before any), ``demoted`` the
    addresses switches moved away from; ``switches`` counts the switches acted on;
    ``subscribed`` is set while a subscription is live, on the sentinel ``listening_to``.
    """

    PING_INTERVAL = 1.0
    """Seconds of silence on the subscription after which the watcher PINGs the sentinel."""
    SILENCE_LIMIT = 3.0
    """Seconds without any reply after which the sentinel counts as gone (the next is tried)."""
    BACKOFF_BASE = 0.1
    BACKOFF_CAP = 5.0
    """Seconds between rounds once every sentinel failed: doubling from BASE up to CAP."""

    def __init__(
        self,
        sentinels: Sequence[Address],
        master_name: str,
        sentinel_kwargs: dict[str, Any],
    ) -> None:
        if not sentinels:
            raise ValueError("a SentinelWatcher needs at least one sentinel address")
        self.sentinels = list(sentinels)
        self.master_name = master_name
        # A sentinel answers at once; one that does not within SILENCE_LIMIT is passed over.
        self._kwargs = dict(sentinel_kwargs, socket_timeout=self.SILENCE_LIMIT)
        self.pools: list[FollowingSentinelPool] = []
        self.master: Address | None = None
        self.demoted: set[Address] = set()
        self.switches = 0
        self.subscribed = asyncio.Event()
        self.listening_to: Address | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- what the pools ask --------------------------------------------------------------------
    def resolve(self, found: Address) -> Address:
        """The master to connect to when a sentinel says ``found``: the latest switch's master
        when ``found`` is an address a switch demoted (that sentinel has not caught up)."""
        if self.master is not None and found in self.demoted:
            return self.master
        return found

    def is_demoted(self, where: Address) -> bool:
        return where in self.demoted

    # -- lifecycle -----------------------------------------------------------------------------
    def ensure_started(self) -> None:
        """Start watching in the running loop unless it already runs or was closed (cheap)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"vecna-sentinel-watcher-{self.master_name}"
        )

    async def start(self) -> None:
        self.ensure_started()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.subscribed.clear()
        self.listening_to = None

    # -- the subscription ----------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        turn = 0
        while True:
            host, port = self.sentinels[turn % len(self.sentinels)]
            turn += 1
            try:
                await self._watch(host, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # a lost subscription, or the first of a run of failures (not every retry)
                loud = self.subscribed.is_set() or not failures
                level = logging.WARNING if loud else logging.DEBUG
                log.log(level, "sentinel %s:%d: %s; trying the next one", host, port, exc)
            failures = 0 if self.subscribed.is_set() else failures + 1
            self.subscribed.clear()
            self.listening_to = None
            if failures >= len(self.sentinels):  # a whole round failed: back off
                rounds = failures - len(self.sentinels)
                delay = min(self.BACKOFF_CAP, self.BACKOFF_BASE * 2**rounds)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _watch(self, host: str, port: int) -> None:
        """Subscribe on one sentinel and act on its switches until the subscription is lost
        (then raise). redis-py's own reconnect is off (no retries) so that every new
        subscription goes through the catch-up below."""
        client = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **self._kwargs)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(SWITCH_CHANNEL)
            # Subscribed first, then asked: a switch in between is seen one way or the other.
            reply = await client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
            )
            if reply:
                await self._catch_up(address(reply[0], reply[1]))
            self.listening_to = (host, port)
            self.subscribed.set()
            loop = asyncio.get_running_loop()
            heard = loop.time()
            while True:
                message = await pubsub.get_message(timeout=self.PING_INTERVAL)
                now = loop.time()
                if message is None:
                    if now - heard > self.SILENCE_LIMIT:
                        raise RedisConnectionError(f"no reply for {self.SILENCE_LIMIT:g}s")
                    await pubsub.ping()  # answered by a "pong" message
                    continue
                heard = now
                if message.get("type") == "message":
                    await self._on_message(message["data"])
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()

    async def _on_message(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        parts = text.split()
        if len(parts) != 5 or parts[0] != self.master_name:
            return
        await self.switch(address(parts[1], parts[2]), address(parts[3], parts[4]))

    async def _catch_up(self, current: Address) -> None:
        """After (re)subscribing: switch away from any other address our pools still use."""
        known = {self.master, *(pool.master_address for pool in self.pools)}
        for old in known:
            if old is not None and old != current:
                await self.switch(old, current)

    async def switch(self, old: Address, new: Address) -> None:
        """The master moved from ``old`` to ``new``: drop every connection of our pools."""
        if self.master == new and old in self.demoted:
            return  # already done (another announcement of the same switch)
        self.demoted.add(old)
        self.demoted.discard(new)
        self.master = new
        self.switches += 1
        log.warning(
            "Sentinel moved master %r from %s:%d to %s:%d: reconnecting",
            self.master_name, *old, *new,
        )  # fmt: skip
        for pool in self.pools:
            pool.master_address = new
            with contextlib.suppress(Exception):
                # Every connection, also those in use: a command in flight fails with
                # ConnectionError and is retried on the new master (vecna's scripts are
                # idempotent); idle and pinned ones reconnect on their next command.
                await pool.disconnect(inuse_connections=True)


class FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel master pool that resolves through its ``SentinelWatcher`` (``watcher=``)."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        self.watcher: SentinelWatcher = kwargs.pop("watcher")
        tls = kwargs.pop("ssl", False)
        kwargs.setdefault(
            "connection_class", FollowingSSLConnection if tls else FollowingConnection
        )
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.watcher.pools.append(self)

    async def get_master_address(self) -> Address:
        """Called on every connect (never per command): also starts the watcher."""
        self.watcher.ensure_started()
        found = await self.sentinel_manager.discover_master(self.service_name)
        master = self.watcher.resolve(address(*found))
        if self.is_master and self.master_address != master:
            self.master_address = master
            # Idle connections reconnect to the new master when next used.
            await self.disconnect(inuse_connections=False)
        return master


class FollowingConnection(SentinelManagedConnection):
    """A Sentinel connection that resolves the master on every socket connect.

    redis-py's ``SentinelManagedConnection`` resolves only in ``connect()``; a reconnect from
    ``send_command`` on a dropped connection (redis-py's retry, a pinned connection) goes back
    to the old address. Here the resolution sits in ``_connect``, which every path takes.
    """

    async def _connect_retry(self) -> None:
        if self._reader:
            return
        pool = self.connection_pool
        if not pool.is_master:
            await super()._connect_retry()  # type: ignore[no-untyped-call]
            return
        await self.connect_check_health(
            check_health=pool.check_connection, retry_socket_connect=False
        )

    async def _connect(self) -> None:
        pool = self.connection_pool
        if not pool.is_master:
            await super()._connect()  # type: ignore[no-untyped-call]
            return
        self.host, self.port = await pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]
        watcher: SentinelWatcher = pool.watcher
        if watcher.is_demoted((self.host, self.port)):
            # A switch arrived while this connection was being opened to the old master.
            self._close()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(
                f"{self.host}:{self.port} is no longer the master of {watcher.master_name!r}"
            )


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass
