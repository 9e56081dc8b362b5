"""Surviving Sentinel failovers: following ``+switch-master`` at once, and the WAIT primitive.

A planned failover (``SENTINEL FAILOVER``) leaves the old master running as a master for about ten
seconds, until Sentinel demotes it; whatever is written there meanwhile is discarded when it
resyncs. A Server must leave it as soon as a sentinel announces the switch: its connections to the
old master must be gone within SWITCH_BOUND seconds and new work must land on the new master.

``Script(..., wait=(replicas, timeout))`` runs the script and Redis WAIT on one connection; fewer
replicas in time raises ``BrokerRefused("NOREPLICAS ...")``. Covered on a pool (pipeline), on a
pinned connection (both commands in one write), after SCRIPT FLUSH (the EVAL fallback), and on a
Redis Cluster (the node that owns the key). All against private redis-server processes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import msgspec
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tests.support.redis_procs import (
    RedisClusterSet,
    RedisProcess,
    RedisSentinelSet,
    wait_until,
)
from tests.support.vecna import eventually, running_worker
from vecna_async import AsyncResult, BrokerRefused, Config, RedisConfig, Server, Signature
from vecna_async.failover import SWITCH_CHANNEL, SentinelWatcher
from vecna_async.pinned import PIN_MIN_POOL, PinnedConnection
from vecna_async.scripts import Script

pytestmark = pytest.mark.anyio

MASTER_NAME = "vecna-failover"
QUEUE = "vecna_tasks"
SWITCH_BOUND = 2.0
"""Seconds after ``+switch-master`` within which no connection of ours may remain on the old
master (Sentinel itself demotes it only ~10 s later)."""
SEND_PERIOD = 0.02
"""The producer's pace during the failover: 50 tasks/s, as in the incident."""

SET_AND_ECHO = "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]"


async def add(a: int, b: int) -> int:
    return a + b


async def _now(value: bool) -> bool:
    """``value`` as an awaitable, for ``eventually`` on an in-process condition."""
    return value


# -- following +switch-master ------------------------------------------------------------------


@pytest.fixture
def sentinel_set() -> Iterator[RedisSentinelSet]:
    """Its own set per test: a failover changes it for good."""
    with RedisSentinelSet(master_name=MASTER_NAME) as sentinels:
        yield sentinels


def sentinel_server(sentinels: RedisSentinelSet, *, reverse: bool = False) -> Server:
    """A Server on the set; ``reverse`` lists the sentinels last first in its URL."""
    hosts = sentinels.sentinel_addresses[:: -1 if reverse else 1]
    url = f"redis-sentinel://{','.join(f'{h}:{p}' for h, p in hosts)}/0?master_name={MASTER_NAME}"
    config = Config(
        broker=url,
        results_expire_in=600,
        shutdown_grace=5.0,
        redis=RedisConfig(
            key_prefix=f"fo{uuid.uuid4().hex[:8]}",
            lease_timeout=5.0,
            heartbeat_interval=1.0,
            normal_tasks_poll_period=500,
            delayed_tasks_poll_period=500,
            connect_timeout=2.0,
            read_timeout=5.0,
        ),
    )
    server = Server(config)
    server.register_task("add", add)
    return server


def our_connections(proc: RedisProcess) -> list[dict[str, Any]]:
    """The clients connected to ``proc`` other than sentinels, replication links and this
    probe: the Server's (nothing else in these tests talks to it)."""
    with redis.Redis(
        **proc.connection_kwargs(), socket_timeout=2.0, decode_responses=True
    ) as probe:
        me = probe.client_id()
        clients = probe.client_list()
    return [
        c
        for c in clients
        if int(c["id"]) != me
        and not c.get("name", "").startswith("sentinel-")
        and not {"S", "M"} & set(c.get("flags", ""))
    ]


def role(proc: RedisProcess) -> str:
    with redis.Redis(**proc.connection_kwargs(), socket_timeout=2.0) as probe:
        return str(probe.info("replication")["role"])


@asynccontextmanager
async def switch_clock(sentinels: RedisSentinelSet) -> AsyncIterator[list[float]]:
    """Records (monotonic) when the first sentinel announces ``+switch-master``."""
    seen: list[float] = []
    host, port = sentinels.sentinel_addresses[-1]
    client = aioredis.Redis(host=host, port=port)
    pubsub = client.pubsub()
    await pubsub.subscribe(SWITCH_CHANNEL)

    async def listen() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message and message["type"] == "message" and not seen:
                seen.append(time.monotonic())

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            yield seen
            tg.cancel_scope.cancel()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


async def test_planned_failover_leaves_the_old_master_at_once(
    sentinel_set: RedisSentinelSet,
) -> None:
    """A Server sending 50 tasks/s with a worker: after SENTINEL FAILOVER, with the old master
    still a master, every connection of ours (pooled, pinned, blocking, pub/sub) leaves it within
    SWITCH_BOUND seconds of +switch-master, nothing goes back to it, and tasks sent from then on
    complete on the new master."""
    server = sentinel_server(sentinel_set)
    old = sentinel_set.master
    sent: list[tuple[float, AsyncResult[Any]]] = []
    failed: list[BaseException] = []

    async def produce(stop: anyio.Event) -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                sent.append((started, await server.send_task(Signature("add", args=[i, 1]))))
            except Exception as exc:  # counted: no send may fail
                failed.append(exc)
            i += 1
            await anyio.sleep(SEND_PERIOD)

    async with server, running_worker(server, concurrency=10), switch_clock(sentinel_set) as clock:
        first = await server.send_task(Signature("add", args=[1, 1]))
        assert await first.get(timeout=10) == 2
        watcher = server._runtime().broker_clients.watcher
        assert isinstance(watcher, SentinelWatcher)
        with anyio.fail_after(10):
            await watcher.subscribed.wait()
        before = our_connections(old)
        assert len(before) >= 4, before  # pinned send/claim/settle/wait, pub/sub, pool

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, stop)
            await anyio.sleep(0.3)  # some traffic before the switch
            new_address = await anyio.to_thread.run_sync(
                partial(sentinel_set.failover, kill=False, demote_old=False)
            )
            assert clock, "no +switch-master seen"
            switched_at = clock[0]
            await anyio.to_thread.run_sync(
                partial(
                    wait_until,
                    lambda: not our_connections(old),
                    timeout=max(0.1, switched_at + SWITCH_BOUND - time.monotonic()),
                    what="our connections to leave the old master",
                    interval=0.02,
                )
            )
            gone_at = time.monotonic()
            assert role(old) == "master"  # the window this is about: not yet demoted
            await anyio.sleep(0.5)  # keep sending on the new master for a while
            stop.set()

        assert watcher.switches == 1
        assert watcher.master == new_address
        assert sentinel_set.master.address == new_address
        assert not failed, failed[:3]

        after = await server.send_task(Signature("add", args=[20, 22]))
        with anyio.fail_after(SWITCH_BOUND):
            assert await after.get(timeout=SWITCH_BOUND) == 42
        # every task sent once our connections had moved completes
        later = [(i, r) for i, (t, r) in enumerate(sent) if t >= gone_at]
        assert later, "the producer sent nothing after the switch"
        with anyio.fail_after(15):
            for i, result in later:
                assert await result.get(timeout=10) == i + 1
        assert not our_connections(old)  # and nothing went back there

    state_key = server.keys.queue(QUEUE).state(after.task_id)
    with redis.Redis(**sentinel_set.master.connection_kwargs()) as new_master:
        assert new_master.exists(state_key)
    with redis.Redis(**old.connection_kwargs()) as old_master:
        assert not old_master.exists(state_key)
    print(
        f"\nconnections left the old master {gone_at - switched_at:.3f}s after +switch-master; "
        f"{len(sent)} tasks sent, {len(later)} after the switch"
    )


async def test_watcher_moves_to_another_sentinel(sentinel_set: RedisSentinelSet) -> None:
    """The sentinel the watcher listens to hangs (SIGSTOP: no reply, no reset): within the
    silence limit it subscribes on another one, and follows the next switch from there."""
    server = sentinel_server(sentinel_set, reverse=True)  # the watcher starts on the last one
    first = sentinel_set.sentinels[-1]
    async with server:
        rt = server._runtime()
        await rt.start_background()  # without any command
        watcher = rt.broker_clients.watcher
        assert watcher is not None
        with anyio.fail_after(10):
            await watcher.subscribed.wait()
        assert watcher.listening_to == first.address
        assert watcher.pools
        assert watcher.pools[0].master_address is None  # no connection yet
        first.pause()
        try:
            await eventually(
                lambda: _now(watcher.listening_to not in (first.address, None)),
                timeout=SentinelWatcher.SILENCE_LIMIT + SentinelWatcher.PING_INTERVAL + 5,
            )
        finally:
            first.resume()  # the failover helper asks every sentinel
        assert await rt.broker_clients.main.set("before", "1")
        new_address = await anyio.to_thread.run_sync(partial(sentinel_set.failover, kill=False))
        await eventually(lambda: _now(watcher.master == new_address), timeout=SWITCH_BOUND)
        assert watcher.switches == 1
        assert await rt.broker_clients.main.set("after", "1")
        assert sentinel_set.master.client().get("after") == b"1"
    assert watcher.listening_to is None  # closed with the Server
    assert not watcher.subscribed.is_set()


async def test_readonly_reply_reconnects_through_sentinel(sentinel_set: RedisSentinelSet) -> None:
    """Without the watcher (closed here), the old master turned replica answers writes with
    READONLY: each connection is dropped and its retry resolves the master again -- on the pool,
    the WAIT pipeline and a pinned connection, each starting on a connection to the old master --
    and nothing keeps writing to the replica."""
    server = sentinel_server(sentinel_set)
    async with server:
        clients = server._runtime().broker_clients
        assert clients.watcher is not None
        await clients.watcher.close()  # as if no switch announcement had reached us
        main = clients.main
        pinned = PinnedConnection(main)
        script = fresh_script()
        try:
            assert await script(pinned, ["w"], ["before"]) == b"before"  # pinned: its own
            await asyncio.gather(main.ping(), main.ping())  # two idle ones in the pool
            old = sentinel_set.master
            assert len(our_connections(old)) >= 3
            new_address = await anyio.to_thread.run_sync(
                partial(sentinel_set.failover, kill=False)  # REPLICAOF on the old one at once
            )
            assert role(old) == "slave"
            assert our_connections(old)  # still there: nothing told us
            with anyio.fail_after(15):
                # at once, so that each takes one of the idle connections to the old master
                await asyncio.gather(
                    main.set("k", "pool-after"),
                    script(main, ["w"], ["pooled"], wait=(1, 5.0)),
                )
                assert await pinned.execute("SET", "p", "pinned-after") == b"OK"
                assert await script(pinned, ["w2"], ["pinned"], wait=(1, 5.0)) == b"pinned"
            assert clients.watcher.switches == 0
            assert not our_connections(old)
        finally:
            await pinned.close()
        with redis.Redis(**sentinel_set.master.connection_kwargs()) as new_master:
            assert sentinel_set.master.address == new_address
            values = new_master.mget("k", "p", "w", "w2")
            assert values == [b"pool-after", b"pinned-after", b"pooled", b"pinned"]


# -- the WAIT primitive ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A master and one connected replica."""
    with RedisProcess() as master, RedisProcess(replicaof=master.address) as replica:

        def linked() -> bool:
            info = replica.client().info("replication")
            return bool(info.get("master_link_status") == "up")

        wait_until(linked, timeout=20, what="the replica to sync")
        yield master, replica


@asynccontextmanager
async def script_client(
    master: RedisProcess, path: str
) -> AsyncIterator[aioredis.Redis | PinnedConnection]:
    """``pool``: a pooled client; ``pinned``: a pinned connection on it; ``unpinned``: a
    PinnedConnection on a pool too small to pin (it falls back to the pool)."""
    cap = 4 if path == "unpinned" else 50
    assert (cap >= PIN_MIN_POOL) == (path != "unpinned")
    client = aioredis.Redis(**master.connection_kwargs(), max_connections=cap)
    pinned = PinnedConnection(client)
    try:
        yield client if path == "pool" else pinned
    finally:
        await pinned.close()
        await client.aclose()


def fresh_script() -> Script:
    return Script(f"set_and_echo_{uuid.uuid4().hex[:6]}", SET_AND_ECHO)


PATHS = ["pool", "pinned", "unpinned"]


@pytest.mark.parametrize("path", PATHS)
async def test_wait_acknowledged(replicated: tuple[RedisProcess, RedisProcess], path: str) -> None:
    master, replica = replicated
    key = f"w:{uuid.uuid4().hex}"
    async with script_client(master, path) as client:
        script = fresh_script()
        assert await script(client, [key], ["v1"], wait=(1, 1.0)) == b"v1"
        # acknowledged: the replica has it now, no polling needed
        assert replica.client().get(key) == b"v1"
        assert await script(client, [key], ["v2"], wait=(1, 1.0)) == b"v2"
        assert replica.client().get(key) == b"v2"
        assert await script(client, [key], ["v3"], wait=(0, 1.0)) == b"v3"  # 0: no WAIT
        assert await script(client, [key], ["v4"]) == b"v4"
        if isinstance(client, PinnedConnection):  # which path it took
            assert (client._conn is not None) == (path == "pinned")


@pytest.mark.parametrize("path", PATHS)
async def test_wait_too_few_replicas(
    replicated: tuple[RedisProcess, RedisProcess], path: str
) -> None:
    master, _ = replicated
    key = f"w:{uuid.uuid4().hex}"
    async with script_client(master, path) as client:
        started = time.monotonic()
        with pytest.raises(BrokerRefused) as caught:
            await fresh_script()(client, [key], ["ran"], wait=(2, 0.2))
        waited = time.monotonic() - started
    err = caught.value
    assert err.transient
    assert err.reply.startswith("NOREPLICAS 1 of 2 replicas acknowledged within 0.2s"), err
    assert err.where == f"{master.host}:{master.port}"
    assert "ran on the master" in str(err)
    assert 0.2 <= waited < 5
    assert master.client().get(key) == b"ran"  # the script did run


@pytest.mark.parametrize("path", PATHS)
async def test_wait_after_script_flush(
    replicated: tuple[RedisProcess, RedisProcess], path: str
) -> None:
    """NOSCRIPT on the EVALSHA: the EVAL fallback runs it, with its WAIT, and caches it."""
    master, replica = replicated
    key = f"w:{uuid.uuid4().hex}"
    script = fresh_script()
    async with script_client(master, path) as client:
        assert await script(client, [key], ["cached"], wait=(1, 1.0)) == b"cached"
        master.client().script_flush()
        assert master.client().script_exists(script.sha) == [False]
        assert await script(client, [key], ["again"], wait=(1, 1.0)) == b"again"
        assert replica.client().get(key) == b"again"
        assert master.client().script_exists(script.sha) == [True]
        master.client().script_flush()
        with pytest.raises(BrokerRefused) as caught:
            await script(client, [key], ["short"], wait=(2, 0.2))
        assert caught.value.reply.startswith("NOREPLICAS 1 of 2"), caught.value
        assert master.client().get(key) == b"short"


async def test_wait_script_error_is_raised(replicated: tuple[RedisProcess, RedisProcess]) -> None:
    """An error reply of the script itself is raised as it is (not a NOREPLICAS)."""
    master, _ = replicated
    broken = Script("broken", "return redis.call('INCR', KEYS[1])")
    key = f"w:{uuid.uuid4().hex}"
    master.client().set(key, "not a number")
    for path in PATHS:
        async with script_client(master, path) as client:
            with pytest.raises(redis.ResponseError, match="not an integer"):
                await broken(client, [key], [], wait=(1, 1.0))
            # the connection is still in step: the next call gets its own replies
            assert await fresh_script()(client, [key], ["ok"], wait=(1, 1.0)) == b"ok"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    with RedisClusterSet() as nodes:
        yield nodes


async def test_wait_on_cluster_runs_on_the_key_owner(cluster: RedisClusterSet) -> None:
    """On a Cluster the script and WAIT go to the node owning the key (these nodes have no
    replicas, so WAIT 1 times out); keys on different nodes each land on their owner."""
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes])
    pinned = PinnedConnection(client)
    try:
        await client.initialize()
        owners: dict[str, str] = {}
        for i in range(30):
            key = f"{{q{i}}}:ready"
            node = client.get_node_from_key(key)
            assert node is not None
            owners.setdefault(node.name, key)
        assert len(owners) == 3
        for node_name, key in owners.items():
            for via in (client, pinned):
                with pytest.raises(BrokerRefused) as caught:
                    await fresh_script()(via, [key], [node_name], wait=(1, 0.1))
                assert caught.value.reply.startswith("NOREPLICAS 0 of 1"), caught.value
                assert caught.value.where == node_name
                host, port = node_name.rsplit(":", 1)
                with redis.Redis(host=host, port=int(port)) as direct:
                    assert direct.get(key) == node_name.encode()
    finally:
        await client.aclose()


# -- wait_replicas in sends and settles ------------------------------------------------------------


async def test_wait_replicas_makes_sends_and_settles_wait_for_a_replica(
    redis_config: RedisConfig,
) -> None:
    """With wait_replicas=1 a send returns only once a replica has it, and raises (transient
    NOREPLICAS, naming the counts) when none acknowledges; a worker's outcomes wait until a
    replica is back and are then stored, each once."""
    with RedisProcess() as master, RedisProcess(replicaof=master.address) as replica:

        def linked() -> bool:
            info = replica.client().info("replication")
            return bool(info.get("master_link_status") == "up")

        wait_until(linked, timeout=20, what="the replica to sync")
        cfg = Config(
            broker=master.url,
            results_expire_in=600,
            redis=msgspec.structs.replace(redis_config, wait_replicas=1, wait_timeout=0.3),
        )
        async with Server(cfg) as srv:
            srv.register_task("add", add)
            r = await srv.send_task(Signature("add", args=[1, 2]))
            # the replica has the message the moment the send returned
            key = srv.keys.queue(QUEUE).record(r.task_id)
            assert replica.client().exists(key) == 1
            async with running_worker(srv, 4):
                assert await r.get(timeout=10) == 3
                replica.pause()  # acknowledges nothing now
                try:
                    with pytest.raises(BrokerRefused) as info:
                        await srv.send_task(Signature("add", args=[2, 2]))
                    assert info.value.transient
                    assert info.value.reply.startswith("NOREPLICAS 0 of 1")
                finally:
                    replica.resume()
                later = await srv.send_task(Signature("add", args=[3, 3]))
                assert await later.get(timeout=15) == 6
            state = replica.client().get(srv.keys.queue(QUEUE).state(later.task_id))
            assert state is not None
            assert b"SUCCESS" in state
