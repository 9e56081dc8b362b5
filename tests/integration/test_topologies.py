"""Every deployment form a broker URL can name, against real Redis servers started here.

For each form -- password (``redis://:pw@``, the seed's ``redis://pw@``, a percent-encoded one, an
ACL user), unix socket (``unix://`` and the seed's ``redis+socket://``), database selection, TLS
(``rediss://``, also with a client certificate), Sentinel (with a failover), Redis Cluster and a
separate result backend -- a Server with a registered ``add`` task and an in-process worker does a
round trip and completes 200 tasks sent in one ``send_tasks`` call; then a plain redis client
checks where the keys landed (the key prefix, the ``{queue}`` hash tag, the database, the node or
slot, the backend server). Bad credentials and untrusted certificates must fail fast with a
BrokerUnavailable that names the address.

Results must arrive over pub/sub: the waiter's periodic re-read is pushed beyond every timeout
(``results_only_by_pubsub``), so a topology whose reply channel does not work fails here.

Servers are private ``redis-server`` processes on loopback, module-scoped, and every test uses its
own key prefix, so tests share servers without seeing each other's keys. Synchronisation is by
awaiting results and deadlines only.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from tests.support.redis_procs import (
    HOST,
    RedisClusterSet,
    RedisProcess,
    RedisSentinelSet,
    TlsFiles,
    make_tls_files,
)
from tests.support.vecna import running_worker
from vecna_async import (
    AsyncResult,
    BrokerRefused,
    BrokerUnavailable,
    Config,
    RedisConfig,
    ResultTimeout,
    Server,
    Signature,
    State,
    TaskCanceled,
    TaskFailed,
)
from vecna_async.backend import results as results_module

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"  # Config's default_queue
PASSWORD = "pw-s3cret"
MASTER_NAME = "vecna-topo"
BATCH = 200
FAILOVER_BOUND = 25.0
"""Seconds within which tasks sent after a Sentinel failover must have completed."""
CANCEL_WAKE_BOUND = 3.0
"""Seconds within which a waiting ``get()`` must raise TaskCanceled after a cancel."""


@pytest.fixture(autouse=True)
def results_only_by_pubsub(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter re-reads the stored state every RECHECK_SECONDS as a safety net for a missed
    publish. Here that is longer than any timeout, so every result these tests wait for (except
    one already stored when ``get()`` starts) must arrive over the Server's reply channel: the
    pub/sub path of each topology is what is tested, not the fallback."""
    monkeypatch.setattr(results_module, "RECHECK_SECONDS", 120.0)


# -- tasks and servers ---------------------------------------------------------------------------


async def add(*args: int) -> int:
    return sum(args)


async def boom(*args: int) -> int:
    raise ValueError(f"boom {list(args)}")


def new_prefix() -> str:
    return f"topo{uuid.uuid4().hex[:10]}"


def make_server(
    broker: str,
    *,
    prefix: str | None = None,
    result_backend: str | None = None,
    **redis_options: Any,
) -> Server:
    """A Server with short timeouts (a failing connection fails in seconds, not minutes)."""
    options: dict[str, Any] = {
        "key_prefix": prefix or new_prefix(),
        "lease_timeout": 5.0,
        "heartbeat_interval": 1.0,
        "normal_tasks_poll_period": 500,
        "delayed_tasks_poll_period": 500,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        **redis_options,
    }
    config = Config(
        broker=broker,
        result_backend=result_backend,
        results_expire_in=600,
        shutdown_grace=5.0,
        redis=RedisConfig(**options),
    )
    server = Server(config)
    server.register_tasks({"add": add, "boom": boom})
    return server


def prefix_of(server: Server) -> str:
    return server.config.redis.key_prefix


async def collect(results: Sequence[AsyncResult[Any]], timeout: float) -> list[Any]:
    """Wait for all results concurrently; the values in order."""
    values: list[Any] = [None] * len(results)

    async def one(index: int, result: AsyncResult[Any]) -> None:
        values[index] = await result.get(timeout=timeout)

    with anyio.fail_after(timeout + 5):
        async with anyio.create_task_group() as tg:
            for index, result in enumerate(results):
                tg.start_soon(one, index, result)
    return values


async def exercise(server: Server, queue: str = "", n: int = BATCH) -> list[str]:
    """The round trip and ``n`` tasks in one send; returns the ids of every task sent."""
    first = await server.send_task(Signature("add", args=[1, 1], routing_key=queue))
    assert await first.get(timeout=10) == 2
    results = await server.send_tasks(
        [Signature("add", args=[i, 1000], routing_key=queue) for i in range(n)]
    )
    assert await collect(results, timeout=30) == [i + 1000 for i in range(n)]
    return [first.task_id, *(r.task_id for r in results)]


@asynccontextmanager
async def plain_client(**kwargs: Any) -> AsyncIterator[aioredis.Redis]:
    """A plain redis.asyncio client (decoded replies) to look at keys."""
    client = aioredis.Redis(decode_responses=True, socket_timeout=5.0, **kwargs)
    try:
        yield client
    finally:
        await client.aclose()


async def key_names(client: aioredis.Redis, pattern: str) -> list[str]:
    """``KEYS pattern`` as sorted str (our private servers hold few keys)."""
    found = await client.keys(pattern)
    return sorted(k.decode() if isinstance(k, bytes) else k for k in found)


def tcp_kwargs(proc: RedisProcess, db: int = 0) -> dict[str, Any]:
    return {**proc.connection_kwargs(), "db": db}


def layout_pattern(prefix: str) -> re.Pattern[str]:
    """Every key vecna_async writes: ``<prefix>:queues`` or ``<prefix>:{<tag>}:...``."""
    return re.compile(rf"^{re.escape(prefix)}:(?:queues|\{{(?P<tag>[^{{}}]+)\}}:.+)$")


def check_layout(keys: Sequence[str], prefix: str, queues: set[str]) -> None:
    assert keys, f"no keys under prefix {prefix!r}"
    pattern = layout_pattern(prefix)
    for key in keys:
        match = pattern.match(key)
        assert match is not None, f"key {key!r} does not follow <prefix>:{{queue}}:... layout"
        tag = match["tag"]
        assert tag is None or tag in queues | {"periodic"}, f"{key!r}: unexpected hash tag"


async def assert_keys_in(
    client: aioredis.Redis,
    prefix: str,
    state_ids: dict[str, Sequence[str]],
    *,
    ttl: bool = True,
) -> list[str]:
    """All of this prefix's keys in ``client``'s database follow the layout; the state key of
    every id in ``state_ids`` (queue -> ids) is there, with a TTL. Returns the keys."""
    keys = await key_names(client, f"{prefix}:*")
    check_layout(keys, prefix, set(state_ids))
    present = set(keys)
    for queue, ids in state_ids.items():
        missing = [i for i in ids if f"{prefix}:{{{queue}}}:s:{i}" not in present]
        assert not missing, f"{len(missing)} state keys missing in queue {queue!r}: {missing[:3]}"
        if ttl and ids:
            remaining = await client.ttl(f"{prefix}:{{{queue}}}:s:{ids[0]}")
            assert 0 < remaining <= 600
    # nothing outside a test prefix: vecna_async writes no key without its prefix
    strays = [k for k in await key_names(client, "*") if not k.startswith("topo")]
    assert not strays, f"keys without the key prefix: {strays[:5]}"
    return keys


async def assert_no_keys(client: aioredis.Redis, prefix: str) -> None:
    assert await client.keys(f"{prefix}:*") == []


# -- password, ACL user --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pw_proc() -> Iterator[RedisProcess]:
    """``requirepass`` on TCP and a unix socket."""
    with RedisProcess(password=PASSWORD, unix_socket=True) as proc:
        yield proc


SPECIAL_PASSWORD = "p@ss:w/rd?#%"


@pytest.fixture(scope="module")
def special_pw_proc() -> Iterator[RedisProcess]:
    """A password that must be percent-encoded in a URL."""
    with RedisProcess(password=SPECIAL_PASSWORD) as proc:
        yield proc


async def test_percent_encoded_password(special_pw_proc: RedisProcess) -> None:
    url = f"redis://:{quote(SPECIAL_PASSWORD, safe='')}@{HOST}:{special_pw_proc.port}/0"
    assert url == special_pw_proc.url
    server = make_server(url)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(special_pw_proc)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


PASSWORD_URLS = {
    "colon-password": "redis://:{pw}@{host}:{port}/0",
    "seed-password": "redis://{pw}@{host}:{port}",
}


@pytest.mark.parametrize("form", sorted(PASSWORD_URLS))
async def test_password_url_forms(pw_proc: RedisProcess, form: str) -> None:
    url = PASSWORD_URLS[form].format(pw=PASSWORD, host=HOST, port=pw_proc.port)
    server = make_server(url)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(pw_proc)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


async def test_acl_user_limited_to_the_key_prefix(pw_proc: RedisProcess) -> None:
    """A username+password ACL user that may touch only ``<prefix>:*`` keys and channels: vecna
    needs no key or channel outside its prefix."""
    prefix = new_prefix()
    user, user_pw = f"user-{prefix}", "acl-pw-1"
    async with plain_client(**tcp_kwargs(pw_proc)) as admin:
        assert await admin.acl_setuser(
            user,
            enabled=True,
            reset=True,
            passwords=[f"+{user_pw}"],
            keys=[f"{prefix}:*"],
            channels=[f"{prefix}:*"],
            categories=["+@all"],
        )
    async with plain_client(host=HOST, port=pw_proc.port, username=user, password=user_pw) as c:
        assert await c.acl_whoami() == user

    server = make_server(f"redis://{user}:{user_pw}@{HOST}:{pw_proc.port}/0", prefix=prefix)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(pw_proc)) as client:
        await assert_keys_in(client, prefix, {QUEUE: ids})
        await client.acl_deluser(user)


@pytest.mark.parametrize("auth", ["wrong-password", "no-password", "wrong-acl-user"])
async def test_bad_credentials_fail_clearly(pw_proc: RedisProcess, auth: str) -> None:
    """A wrong or missing password surfaces as BrokerRefused (not transient: a mistake, not an
    outage to wait out) naming the address (without the password) and Redis's reply, caused by
    redis-py's AuthenticationError, and fast."""
    userinfo = {
        "wrong-password": ":not-the-pw@",
        "no-password": "",
        "wrong-acl-user": "nobody:not-the-pw@",
    }[auth]
    server = make_server(f"redis://{userinfo}{HOST}:{pw_proc.port}/0")
    started = time.monotonic()
    async with server:
        with anyio.fail_after(10), pytest.raises(BrokerRefused) as info:
            await server.send_task(Signature("add", args=[1, 1]))
    elapsed = time.monotonic() - started
    assert not info.value.transient
    assert info.value.reply.split()[0] in ("WRONGPASS", "NOAUTH"), info.value.reply
    message = str(info.value)
    assert f"{HOST}:{pw_proc.port}" in message
    assert "not-the-pw" not in message
    assert isinstance(info.value.__cause__, AuthenticationError), repr(info.value.__cause__)
    assert re.search(r"WRONGPASS|invalid username-password|authenticat", message)
    assert elapsed < 5, f"took {elapsed:.1f}s to report bad credentials"


# -- unix socket, database selection -------------------------------------------------------------


@pytest.fixture(scope="module")
def unix_proc() -> Iterator[RedisProcess]:
    with RedisProcess(unix_socket=True) as proc:
        yield proc


UNIX_URLS = {
    "unix-db0": ("unix://{path}?db=0", 0),
    "unix-db2": ("unix://{path}?db=2", 2),
    "seed-socket-db0": ("redis+socket://{path}:/0", 0),
    "seed-socket-db4": ("redis+socket://{path}:/4", 4),
}


@pytest.mark.parametrize("form", sorted(UNIX_URLS))
async def test_unix_socket_url_forms(unix_proc: RedisProcess, form: str) -> None:
    assert unix_proc.unix_path is not None
    template, db = UNIX_URLS[form]
    server = make_server(template.format(path=unix_proc.unix_path))
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(unix_socket_path=str(unix_proc.unix_path), db=db) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})
    for other in {0, 2, 4} - {db}:
        async with plain_client(**tcp_kwargs(unix_proc, other)) as client:
            await assert_no_keys(client, prefix_of(server))


async def test_seed_socket_form_with_password(pw_proc: RedisProcess) -> None:
    assert pw_proc.unix_path is not None
    server = make_server(f"redis+socket://{PASSWORD}@{pw_proc.unix_path}:/0")
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(pw_proc)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


async def test_database_number_in_tcp_url(unix_proc: RedisProcess) -> None:
    server = make_server(f"redis://{HOST}:{unix_proc.port}/3")
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(unix_proc, 3)) as db3:
        keys = await assert_keys_in(db3, prefix_of(server), {QUEUE: ids})
        assert f"{prefix_of(server)}:{{{QUEUE}}}:seq" in keys
    async with plain_client(**tcp_kwargs(unix_proc, 0)) as db0:
        await assert_no_keys(db0, prefix_of(server))


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the server's certificate."""
    return make_tls_files(tmp_path_factory.mktemp("other-tls")).ca_cert


@pytest.fixture(scope="module")
def tls_proc(tls_files: TlsFiles) -> Iterator[RedisProcess]:
    with RedisProcess(tls=tls_files) as proc:
        yield proc


@pytest.mark.parametrize("verify", ["ca-certs", "no-verify"])
async def test_tls(tls_proc: RedisProcess, tls_files: TlsFiles, verify: str) -> None:
    options: dict[str, Any] = (
        {"tls_ca_certs": str(tls_files.ca_cert)} if verify == "ca-certs" else {"tls_verify": False}
    )
    url = f"rediss://{HOST}:{tls_proc.port}/0"
    assert url == tls_proc.url
    server = make_server(url, **options)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(tls_proc)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


@pytest.fixture(scope="module")
def mtls_proc(tls_files: TlsFiles) -> Iterator[RedisProcess]:
    """TLS that requires a client certificate (``tls-auth-clients yes``)."""
    with RedisProcess(tls=tls_files, tls_auth_clients=True) as proc:
        yield proc


async def test_tls_client_certificate(mtls_proc: RedisProcess, tls_files: TlsFiles) -> None:
    server = make_server(
        f"rediss://{HOST}:{mtls_proc.port}/0",
        tls_ca_certs=str(tls_files.ca_cert),
        tls_certfile=str(tls_files.cert),
        tls_keyfile=str(tls_files.key),
    )
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(mtls_proc)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


async def test_tls_missing_client_certificate_fails_clearly(
    mtls_proc: RedisProcess, tls_files: TlsFiles
) -> None:
    server = make_server(f"rediss://{HOST}:{mtls_proc.port}/0", tls_ca_certs=str(tls_files.ca_cert))
    async with server:
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as info:
            await server.send_task(Signature("add", args=[1, 1]))
    assert f"rediss://{HOST}:{mtls_proc.port}" in str(info.value)


@pytest.mark.parametrize("ca", ["other-ca", "system-cas"])
async def test_tls_untrusted_certificate_fails_clearly(
    tls_proc: RedisProcess, other_ca: Path, ca: str
) -> None:
    options: dict[str, Any] = {"tls_ca_certs": str(other_ca)} if ca == "other-ca" else {}
    server = make_server(f"rediss://{HOST}:{tls_proc.port}/0", **options)
    async with server:
        with anyio.fail_after(10), pytest.raises(BrokerUnavailable) as info:
            await server.send_task(Signature("add", args=[1, 1]))
    message = str(info.value)
    assert f"rediss://{HOST}:{tls_proc.port}" in message
    assert "certificate verify failed" in message, message


# -- Sentinel ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet(master_name=MASTER_NAME) as sentinels:
        yield sentinels


def sentinel_hosts(sentinels: RedisSentinelSet) -> str:
    return ",".join(f"{h}:{p}" for h, p in sentinels.sentinel_addresses)


@pytest.mark.parametrize("naming", ["url-query", "redis-config", "url-query-db2"])
async def test_sentinel(sentinel_set: RedisSentinelSet, naming: str) -> None:
    hosts = sentinel_hosts(sentinel_set)
    db = 2 if naming.endswith("db2") else 0
    if naming.startswith("url-query"):
        server = make_server(f"redis-sentinel://{hosts}/{db}?master_name={MASTER_NAME}")
    else:
        server = make_server(f"redis-sentinel://{hosts}/{db}", master_name=MASTER_NAME)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    async with plain_client(**tcp_kwargs(sentinel_set.master, db)) as client:
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})
    async with plain_client(**tcp_kwargs(sentinel_set.master, 2 - db)) as client:
        await assert_no_keys(client, prefix_of(server))


async def test_sentinel_failover_worker_follows_new_master(sentinel_set: RedisSentinelSet) -> None:
    """Kill the master while a worker runs: once the sentinels promoted the replica, tasks sent
    afterwards complete within FAILOVER_BOUND seconds, with no help from the test."""
    server = make_server(
        f"redis-sentinel://{sentinel_hosts(sentinel_set)}/0?master_name={MASTER_NAME}"
    )
    async with server, running_worker(server, concurrency=20):
        before = await server.send_task(Signature("add", args=[1, 1]))
        assert await before.get(timeout=10) == 2
        old_master = sentinel_set.master.address
        new_master = await anyio.to_thread.run_sync(sentinel_set.failover)
        assert new_master != old_master
        assert sentinel_set.master.address == new_master

        started = time.monotonic()
        with anyio.fail_after(FAILOVER_BOUND):
            after = await server.send_task(Signature("add", args=[2, 2]))
            assert await after.get(timeout=FAILOVER_BOUND) == 4
            first_after = time.monotonic() - started
            results = await server.send_tasks([Signature("add", args=[i, 1000]) for i in range(50)])
            assert await collect(results, timeout=FAILOVER_BOUND) == [i + 1000 for i in range(50)]
        print(f"first task after failover done in {first_after:.2f}s")
    async with plain_client(**tcp_kwargs(sentinel_set.master)) as client:
        ids = [after.task_id, *(r.task_id for r in results)]
        await assert_keys_in(client, prefix_of(server), {QUEUE: ids})


# -- Redis Cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_set() -> Iterator[RedisClusterSet]:
    with RedisClusterSet(masters=3) as cluster:
        yield cluster


def cluster_url(cluster: RedisClusterSet) -> str:
    return "redis://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)


async def cluster_keys(cluster: RedisClusterSet, prefix: str) -> dict[str, int]:
    """Every key under ``prefix`` on any node -> the port of the node holding it."""
    found: dict[str, int] = {}
    for node in cluster.nodes:
        async with plain_client(**tcp_kwargs(node)) as client:
            for key in await key_names(client, f"{prefix}:*"):
                assert key not in found, f"{key!r} on two nodes"
                found[key] = node.port
    return found


async def keyslot(cluster: RedisClusterSet, key: str) -> int:
    async with plain_client(**tcp_kwargs(cluster.nodes[0])) as client:
        slot = await client.execute_command("CLUSTER", "KEYSLOT", key)  # type: ignore[no-untyped-call]
        return int(slot)


async def assert_cluster_layout(
    cluster: RedisClusterSet, prefix: str, state_ids: dict[str, Sequence[str]]
) -> dict[str, int]:
    """Keys follow the layout; all keys of a queue are in the slot of its ``{queue}`` tag, on one
    node; every state key is there. Returns queue -> slot."""
    found = await cluster_keys(cluster, prefix)
    check_layout(sorted(found), prefix, set(state_ids))
    slots: dict[str, int] = {}
    for queue, ids in state_ids.items():
        tagged = [k for k in found if k.startswith(f"{prefix}:{{{queue}}}:")]
        slot = await keyslot(cluster, f"{{{queue}}}")
        slots[queue] = slot
        for key in tagged[:20]:
            assert await keyslot(cluster, key) == slot, key
        assert len({found[k] for k in tagged}) == 1, f"queue {queue!r} spans several nodes"
        missing = [i for i in ids if f"{prefix}:{{{queue}}}:s:{i}" not in found]
        assert not missing, f"{len(missing)} state keys missing in queue {queue!r}"
    return slots


async def test_cluster_round_trip_and_batch(cluster_set: RedisClusterSet) -> None:
    server = make_server(cluster_url(cluster_set))
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
    await assert_cluster_layout(cluster_set, prefix_of(server), {QUEUE: ids})


async def test_cluster_two_queues_in_different_slots(cluster_set: RedisClusterSet) -> None:
    server = make_server(cluster_url(cluster_set))
    prefix = prefix_of(server)
    slot_q1 = await keyslot(cluster_set, f"{prefix}:{{q1}}:ready")
    slot_q2 = await keyslot(cluster_set, f"{prefix}:{{q2}}:ready")
    assert slot_q1 != slot_q2
    async with (
        server,
        running_worker(server, concurrency=20, queue="q1"),
        running_worker(server, concurrency=20, queue="q2"),
    ):
        ids_q1 = await exercise(server, queue="q1", n=50)
        ids_q2 = await exercise(server, queue="q2", n=50)
    slots = await assert_cluster_layout(cluster_set, prefix, {"q1": ids_q1, "q2": ids_q2})
    assert slots == {"q1": slot_q1, "q2": slot_q2}
    assert await cluster_keys(cluster_set, f"{prefix}:{{{QUEUE}}}") == {}


async def test_cluster_delayed_task(cluster_set: RedisClusterSet) -> None:
    """An ``eta`` task is promoted by the worker's scheduler on a cluster."""
    server = make_server(cluster_url(cluster_set))
    async with server, running_worker(server, concurrency=10):
        sent_at = time.monotonic()
        sig = Signature("add", args=[2, 3], eta=datetime.now(UTC) + timedelta(seconds=0.5))
        result = await server.send_task(sig)
        state = await result.get_state()
        assert state is not None
        if time.monotonic() - sent_at < 0.4:
            assert state.state is State.PENDING
        assert await result.get(timeout=10) == 5
        assert time.monotonic() - sent_at >= 0.45
    prefix = prefix_of(server)
    await assert_cluster_layout(cluster_set, prefix, {QUEUE: [result.task_id]})
    # the scheduler's queue registry is an ordinary key in its own slot
    assert f"{prefix}:queues" in await cluster_keys(cluster_set, prefix)


# -- separate result backend ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture(scope="module")
def backend_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


async def test_separate_result_backend(
    broker_proc: RedisProcess, backend_proc: RedisProcess
) -> None:
    server = make_server(broker_proc.url, result_backend=backend_proc.url)
    prefix = prefix_of(server)
    async with server, running_worker(server, concurrency=50):
        ids = await exercise(server)
        ok = server.result(ids[0])
        ok_state = await ok.get_state()
        assert ok_state is not None
        assert ok_state.state is State.SUCCESS
        assert ok_state.results == [2]

        failing = await server.send_task(Signature("boom", args=[7]))
        with pytest.raises(TaskFailed, match=r"ValueError: boom \[7\]"):
            await failing.get(timeout=10)
        fail_state = await failing.get_state()
        assert fail_state is not None
        assert fail_state.state is State.FAILURE
        assert "boom [7]" in fail_state.error

    async with plain_client(**tcp_kwargs(backend_proc)) as backend:
        keys = await assert_keys_in(backend, prefix, {QUEUE: [*ids, failing.task_id]})
        # the backend holds states only
        assert all(":s:" in k for k in keys), [k for k in keys if ":s:" not in k][:5]
    async with plain_client(**tcp_kwargs(broker_proc)) as broker:
        broker_keys = await key_names(broker, f"{prefix}:*")
        assert broker_keys, "the broker holds the queue's keys"
        check_layout(broker_keys, prefix, {QUEUE})
        states_on_broker = [k for k in broker_keys if ":s:" in k]
        assert states_on_broker == [], states_on_broker[:5]


async def test_separate_backend_result_of_a_task_sent_before_any_worker(
    broker_proc: RedisProcess, backend_proc: RedisProcess
) -> None:
    """A waiter started before any worker runs gets the result once one starts (it listens to
    the backend's channel and reads the backend, not the broker)."""
    server = make_server(broker_proc.url, result_backend=backend_proc.url)
    async with server:
        result = await server.send_task(Signature("add", args=[20, 22]))
        values: list[int] = []
        done = anyio.Event()

        async def wait() -> None:
            values.append(await result.get(timeout=10))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            async with running_worker(server, concurrency=5):
                with anyio.fail_after(15):
                    await done.wait()
        assert values == [42]
        state = await result.get_state()
        assert state is not None
        assert state.state is State.SUCCESS


@pytest.mark.parametrize("backend", ["shared", "separate"])
async def test_state_pending_after_send(
    broker_proc: RedisProcess, backend_proc: RedisProcess, backend: str
) -> None:
    """A sent task is PENDING until a worker takes it (the seed's "initial state of a task";
    API.md: a delayed task is "PENDING until it is due"), whichever Redis holds the states.
    BUG (separate): nothing is written to the backend at send time, so ``get_state()`` returns
    None (only follow-ups enqueued by a worker get their PENDING state stored there)."""
    separate = backend_proc.url if backend == "separate" else None
    server = make_server(broker_proc.url, result_backend=separate)
    async with server:
        now = await server.send_task(Signature("add", args=[1, 2]))
        later = await server.send_task(
            Signature("add", args=[3, 4], eta=datetime.now(UTC) + timedelta(seconds=60))
        )
        for result in (now, later):
            state = await result.get_state()
            assert state is not None, f"no state for {result.task_id} after send ({backend})"
            assert state.state is State.PENDING


@pytest.mark.parametrize("backend", ["shared", "separate"])
async def test_cancel_delayed_task_wakes_waiter(
    broker_proc: RedisProcess, backend_proc: RedisProcess, backend: str
) -> None:
    """API.md: ``cancel_delayed_task(sig)`` -> state CANCELED, never runs; a waiting ``get()``
    raises TaskCanceled at once (results arrive over pub/sub), whichever Redis holds the states.
    The task is sent while the listener is subscribed, so its waiter relies on the reply channel
    alone (the re-read is pushed past the timeout by ``results_only_by_pubsub``)."""
    separate = backend_proc.url if backend == "separate" else None
    server = make_server(broker_proc.url, result_backend=separate)
    async with server, running_worker(server, concurrency=5):
        warm = await server.send_task(Signature("add", args=[0, 1]))
        assert await warm.get(timeout=10) == 1  # the result listener is subscribed now
        sig = Signature("add", args=[5, 6], eta=datetime.now(UTC) + timedelta(seconds=60))
        result = await server.send_task(sig)
        assert await server.cancel_delayed_task(sig) is True
        started = time.monotonic()
        outcome: BaseException | None = None
        try:
            # get() re-reads the state once more at its own deadline: only a wake-up well before
            # it shows that the cancel reached the waiter over the reply channel
            with anyio.fail_after(CANCEL_WAKE_BOUND):
                await result.get(timeout=10)
        except (TaskCanceled, ResultTimeout, TimeoutError) as exc:
            outcome = exc
        waited = time.monotonic() - started
        state = await result.get_state()
    assert state is not None, "no state stored after cancel"
    assert state.state is State.CANCELED
    assert isinstance(outcome, TaskCanceled), (
        f"get() after cancel_delayed_task: {outcome!r} after {waited:.1f}s "
        f"(no TaskCanceled within {CANCEL_WAKE_BOUND}s: the cancel was not published)"
    )
