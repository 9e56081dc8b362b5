"""The connected parts of a Server: clients, broker, backend and the result listener.

Built when a Server is first used (redis.asyncio connects lazily, so building is synchronous) and
torn down by ``Server.close()``. Workers and schedulers take what they need from here.

Background work: for a Sentinel URL, a ``SentinelWatcher`` per Redis (``vecna_async.failover``)
follows ``+switch-master``. It starts with the first connection its pools open (no cost per
command) or with ``start_background()``, and stops in ``close()``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from vecna_async.backend.redis import RedisBackend, RedisBrokerStates
from vecna_async.backend.results import Canceler, ResultListener, ResultSource
from vecna_async.broker.redis import RedisBroker
from vecna_async.config import Config
from vecna_async.connection import RedisClients, open_clients, parse_url, with_credentials
from vecna_async.exceptions import UnsupportedRedis
from vecna_async.keys import Keys
from vecna_async.preflight import check_channels, check_redis
from vecna_async.scheduler.periodic import PeriodicStore
from vecna_async.signing import Signer

log = logging.getLogger("vecna_async.preflight")


@dataclass
class Runtime:
    config: Config
    keys: Keys
    broker_clients: RedisClients
    backend_clients: RedisClients
    broker: RedisBroker
    backend: RedisBackend
    listener: ResultListener
    results: ResultSource
    periodic: PeriodicStore
    separate_backend: bool
    cluster: bool
    signer: Signer | None = None
    _checked: list[str] | None = field(default=None, init=False, repr=False)
    _refused: UnsupportedRedis | None = field(default=None, init=False, repr=False)
    _checking: anyio.Lock | None = field(default=None, init=False, repr=False)

    async def preflight(self) -> list[str]:
        """The startup checks (``vecna_async.preflight``) on the broker's Redis and a separate
        result backend's, run at most once per runtime: the warnings are logged once (WARNING)
        and returned; a Redis older than 7.0 raises UnsupportedRedis (every call, once found).
        BrokerUnavailable if Redis cannot be reached (then a later call checks again);
        BrokerRefused if it refuses the credentials (WRONGPASS, NOAUTH) or the channels
        (NOPERM): a configuration error, not an outage."""
        if self._checking is None:
            self._checking = anyio.Lock()
        async with self._checking:
            if self._refused is not None:
                raise self._refused
            if self._checked is None:
                # memory:// has no INFO, CONFIG or ACLs worth checking: it is this process
                targets = [c for c in self.clients() if c.target.kind != "memory"]
                warnings: list[str] = []
                try:
                    for clients in targets:
                        warnings += await check_redis(clients.main, clients.target.describe())
                except UnsupportedRedis as exc:
                    self._refused = exc
                    raise
                await self._check_channels(targets)
                for warning in warnings:
                    log.warning("%s", warning)
                self._checked = warnings
            return self._checked

    async def _check_channels(self, targets: list[RedisClients]) -> None:
        """The channels this Server uses: the scheduler wake-ups on the broker's Redis, its
        result replies on the backend's (the same Redis unless a separate backend is set)."""
        timeout = self.config.redis.connect_timeout + self.config.redis.read_timeout
        for clients in targets:
            uses = []
            if clients is self.broker_clients:
                uses.append(self.keys.sched_channel)
            if clients is self.backend_clients:
                uses.append(self.backend.reply_channel)
            where = clients.target.describe()
            await check_channels(clients.main, where, uses, timeout, self.keys.prefix)

    def clients(self) -> list[RedisClients]:
        """The broker's clients, then the backend's if it is a separate Redis."""
        if self.separate_backend:
            return [self.broker_clients, self.backend_clients]
        return [self.broker_clients]

    async def start_background(self) -> None:
        """Start the background work now rather than with the first connection: the Sentinel
        watchers (nothing for other URLs). Idempotent."""
        for clients in self.clients():
            if clients.watcher is not None:
                await clients.watcher.start()

    async def close(self) -> None:
        for clients in self.clients():  # first: a switch must not reconnect closing pools
            if clients.watcher is not None:
                await clients.watcher.close()
        await self.listener.close()
        await self.broker.close()
        await self.broker_clients.close()
        if self.separate_backend:
            await self.backend_clients.close()


def cancel_running(broker: RedisBroker) -> Canceler:
    """``Server.cancel_task``: cancel one task, queued, delayed or running."""

    async def cancel(queue: str, task_id: str) -> bool:
        (canceled,) = await broker.cancel(queue, [task_id], running=True)
        return canceled

    return cancel


def open_runtime(config: Config, keys: Keys, server_id: str) -> Runtime:
    r = config.redis
    broker_target = parse_url(config.broker, field_name="broker", master_name=r.master_name)
    broker_target = with_credentials(broker_target, r)
    broker_clients = open_clients(broker_target, r)
    separate = bool(config.result_backend) and config.result_backend != config.broker
    if separate:
        assert config.result_backend is not None
        backend_target = parse_url(
            config.result_backend, field_name="result_backend", master_name=r.master_name
        )
        backend_target = with_credentials(backend_target, r)
        backend_clients = open_clients(backend_target, r)
    else:
        backend_clients = broker_clients
    channel = keys.reply_channel(server_id)
    backend = RedisBackend(
        backend_clients, keys, config.results_expire_in, channel, shares_broker=not separate
    )
    broker = RedisBroker(broker_clients, keys, config, state_store=backend if separate else None)
    listener = ResultListener(backend_clients.main, channel, backend_clients.target.describe())
    signer = Signer.from_keys(config.signing_keys)
    # with a separate backend, RECEIVED (and PENDING) are what the broker's message record says
    broker_states = (
        RedisBrokerStates(broker_clients.main, keys, broker_target.describe()) if separate else None
    )
    return Runtime(
        config=config,
        keys=keys,
        broker_clients=broker_clients,
        backend_clients=backend_clients,
        broker=broker,
        backend=backend,
        listener=listener,
        results=ResultSource(backend, listener, broker_states, cancel=cancel_running(broker)),
        periodic=PeriodicStore(broker_clients.main, keys, broker, r.max_message_bytes, signer),
        separate_backend=separate,
        cluster=broker_target.kind == "cluster",
        signer=signer,
    )
