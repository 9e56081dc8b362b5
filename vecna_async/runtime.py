"""The connected parts of a Server: clients, broker, backend and the result listener.

Built when a Server is first used (redis.asyncio connects lazily, so building is synchronous) and
torn down by ``Server.close()``. Workers and schedulers take what they need from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from vecna_async.backend.redis import RedisBackend, RedisBrokerStates
from vecna_async.backend.results import ResultListener, ResultSource
from vecna_async.broker.redis import RedisBroker
from vecna_async.config import Config
from vecna_async.connection import RedisClients, open_clients, parse_url
from vecna_async.keys import Keys
from vecna_async.scheduler.periodic import PeriodicStore


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

    async def close(self) -> None:
        await self.listener.close()
        await self.broker.close()
        await self.broker_clients.close()
        if self.separate_backend:
            await self.backend_clients.close()


def open_runtime(config: Config, keys: Keys, server_id: str) -> Runtime:
    r = config.redis
    broker_target = parse_url(config.broker, field_name="broker", master_name=r.master_name)
    broker_clients = open_clients(broker_target, r)
    separate = bool(config.result_backend) and config.result_backend != config.broker
    if separate:
        assert config.result_backend is not None
        backend_target = parse_url(
            config.result_backend, field_name="result_backend", master_name=r.master_name
        )
        backend_clients = open_clients(backend_target, r)
    else:
        backend_clients = broker_clients
    channel = keys.reply_channel(server_id)
    backend = RedisBackend(
        backend_clients, keys, config.results_expire_in, channel, shares_broker=not separate
    )
    broker = RedisBroker(broker_clients, keys, config, state_store=backend if separate else None)
    listener = ResultListener(backend_clients.main, channel)
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
        results=ResultSource(backend, listener, broker_states),
        periodic=PeriodicStore(broker_clients.main, keys, broker, r.max_message_bytes),
        separate_backend=separate,
        cluster=broker_target.kind == "cluster",
    )
