"""The private Redis processes in tests/support/redis_procs.py really work.

Every test starts its own servers on free loopback ports (never the shared 6379) and relies
on the context managers to stop them. Synchronisation is by polling with deadlines only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.support.redis_procs import (
    HOST,
    RedisClusterSet,
    RedisProcess,
    RedisSentinelSet,
    RedisStartError,
    TlsFiles,
    free_port,
    make_tls_files,
    wait_until,
)


def _no_retry_client(**kwargs: Any) -> redis.Redis:
    """A client that fails fast instead of retrying (for asserting failures)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 2.0, **kwargs}
    return redis.Redis(retry=Retry(NoBackoff(), 0), **options)


# redis.sentinel and redis.cluster are not annotated: wrap the calls used here once.
def _sentinel(addresses: list[tuple[str, int]]) -> Sentinel:
    return Sentinel(addresses, socket_timeout=2.0)  # type: ignore[no-untyped-call]


def _discover_master(sentinel: Sentinel, name: str) -> tuple[str, int]:
    address = sentinel.discover_master(name)  # type: ignore[no-untyped-call]
    return (str(address[0]), int(address[1]))


def _master_for(sentinel: Sentinel, name: str) -> redis.Redis:
    client = sentinel.master_for(name, socket_timeout=2.0, decode_responses=True)  # type: ignore[no-untyped-call]
    return cast(redis.Redis, client)


def _replica_for(sentinel: Sentinel, name: str) -> redis.Redis:
    client = sentinel.slave_for(name, socket_timeout=2.0, decode_responses=True)  # type: ignore[no-untyped-call]
    return cast(redis.Redis, client)


def _cluster_client(startup_nodes: list[tuple[str, int]]) -> RedisCluster:
    nodes = [ClusterNode(h, p) for h, p in startup_nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


def _node_port_for_key(client: RedisCluster, key: str) -> int:
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return int(node.port)


def _keyslot(client: RedisCluster, key: str) -> int:
    return int(client.keyslot(key))  # type: ignore[no-untyped-call]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


# --------------------------------------------------------------------------------------------
# free_port / standalone
# --------------------------------------------------------------------------------------------


def test_free_port_is_bindable_and_never_repeats() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, ports[-1]))


def test_standalone_ping_set_get() -> None:
    with RedisProcess() as server:
        assert server.host == HOST
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.port != 6379
        client = redis.Redis.from_url(server.url, decode_responses=True)
        with client:
            assert client.ping() is True
            assert client.set("greeting", "hello") is True
            assert client.get("greeting") == "hello"
            config = client.config_get("save")
            assert config["save"] == ""
            assert client.config_get("appendonly")["appendonly"] == "no"
            assert Path(str(client.config_get("dir")["dir"])) == server.directory


def test_kill_and_restart_on_the_same_port() -> None:
    with RedisProcess() as server:
        port, first_pid = server.port, server.pid
        assert first_pid is not None
        with server.client() as client:
            client.set("k", "v")
        server.kill()
        assert not server.running
        assert not _pid_alive(first_pid)
        with pytest.raises(redis.ConnectionError):
            _no_retry_client(host=server.host, port=port).ping()

        server.restart()
        assert server.port == port
        assert server.pid not in (None, first_pid)
        with _no_retry_client(host=server.host, port=port) as client:
            assert client.ping() is True
            assert client.get("k") is None  # no persistence: a crash loses everything

        server.stop()  # graceful stop, then start again
        server.restart()
        with server.client() as client:
            assert client.ping() is True


def test_pause_and_resume() -> None:
    with RedisProcess() as server:
        server.pause()
        assert server.paused
        with (
            pytest.raises(redis.TimeoutError),
            _no_retry_client(host=server.host, port=server.port, socket_timeout=0.3) as client,
        ):
            client.ping()
        server.resume()
        assert not server.paused
        with server.client() as client:
            assert client.ping() is True
        server.pause()  # stop() must cope with a SIGSTOPped server


def test_context_manager_cleans_up_after_a_failure() -> None:
    pid: int | None = None
    directory: Path | None = None
    with pytest.raises(RuntimeError, match="boom"), RedisProcess() as server:  # noqa: PT012
        pid, directory = server.pid, server.directory
        raise RuntimeError("boom")
    assert pid is not None
    assert directory is not None
    assert not _pid_alive(pid)
    assert not directory.exists()


def test_lost_port_race_moves_to_another_port() -> None:
    server = RedisProcess()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, server.port))  # someone grabbed "our" free port
        squatter.listen()
        with server:
            assert server.port != squatter.getsockname()[1]
            with server.client() as client:
                assert client.ping() is True


def test_forgotten_server_is_killed_at_interpreter_exit() -> None:
    code = (
        "from tests.support.redis_procs import RedisProcess\n"
        "server = RedisProcess().start()\n"
        "print(server.pid, server.directory)\n"
    )
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid, directory = out.stdout.split()
    assert not _pid_alive(int(pid))
    assert not Path(directory).exists()


def test_start_failure_reports_the_log() -> None:
    server = RedisProcess(extra_args=["--no-such-directive", "1"])
    try:
        with pytest.raises(RedisStartError, match="no-such-directive"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_password() -> None:
    with RedisProcess(password="s3cret/:@") as server:
        assert server.url == f"redis://:s3cret%2F%3A%40@127.0.0.1:{server.port}/0"
        with (
            pytest.raises(redis.AuthenticationError),
            _no_retry_client(host=server.host, port=server.port) as anonymous,
        ):
            anonymous.set("k", "v")
        with redis.Redis.from_url(server.url) as client:
            assert client.set("k", "v") is True
            assert client.get("k") == b"v"


def test_unix_socket() -> None:
    with RedisProcess(unix_socket=True) as server:
        assert server.unix_path is not None
        assert server.unix_path.is_socket()
        with redis.Redis(unix_socket_path=str(server.unix_path)) as client:
            assert client.ping() is True
            client.set("via", "unix")
        cli = shutil.which("redis-cli")
        assert cli is not None
        out = subprocess.run(
            [cli, "-s", str(server.unix_path), "GET", "via"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert out.stdout.strip() == "unix"


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def test_tls_verifies_the_certificate(tls_files: TlsFiles) -> None:
    with RedisProcess(tls=tls_files) as server:
        assert server.url == f"rediss://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url, ssl_ca_certs=str(tls_files.ca_cert)) as client:
            assert client.ping() is True
            client.set("k", "tls")
        # The certificate carries DNS:localhost too, and hostname checking is on.
        with redis.Redis(
            host="localhost", port=server.port, ssl=True, ssl_ca_certs=str(tls_files.ca_cert)
        ) as client:
            assert client.get("k") == b"tls"

        # Without our CA the chain does not verify.
        with (
            pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"),
            _no_retry_client(host=server.host, port=server.port, ssl=True) as untrusting,
        ):
            untrusting.ping()
        # A plain-text client cannot talk to the TLS port (and there is no plain port).
        with (
            pytest.raises(redis.ConnectionError),
            _no_retry_client(host=server.host, port=server.port) as plain,
        ):
            plain.ping()


def test_tls_client_certificates(tls_files: TlsFiles) -> None:
    with RedisProcess(tls=tls_files, tls_auth_clients=True) as server:
        with server.client() as client:  # connection_kwargs() include the client cert
            assert client.ping() is True
        with (
            pytest.raises(redis.ConnectionError),
            _no_retry_client(
                host=server.host, port=server.port, ssl=True, ssl_ca_certs=str(tls_files.ca_cert)
            ) as anonymous,
        ):
            anonymous.ping()


# --------------------------------------------------------------------------------------------
# Sentinel
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_set() -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet(master_name="vecna-test") as sset:
        yield sset


def test_sentinel_master_for_and_failover(sentinel_set: RedisSentinelSet) -> None:
    ports = [p for _, p in sentinel_set.sentinel_addresses]
    assert len(ports) == 3
    assert sentinel_set.url == (
        f"redis-sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}/0"
        "?master_name=vecna-test"
    )
    sentinel = _sentinel(sentinel_set.sentinel_addresses)
    assert _discover_master(sentinel, "vecna-test") == sentinel_set.master.address

    master = _master_for(sentinel, "vecna-test")
    assert master.set("before", "1") is True
    assert master.get("before") == "1"
    replica = _replica_for(sentinel, "vecna-test")
    assert wait_until(lambda: replica.get("before"), timeout=10, what="replication") == "1"

    old_master, old_replica = sentinel_set.master, sentinel_set.replica
    new_address = sentinel_set.failover()
    assert new_address == old_replica.address
    assert sentinel_set.master is old_replica
    assert sentinel_set.replica is old_master
    assert not old_master.running
    assert _discover_master(sentinel, "vecna-test") == new_address

    # The same sentinel-managed client reconnects to the promoted replica...
    assert master.set("after", "2") is True
    assert master.get("before") == "1"
    assert master.get("after") == "2"
    # ...and so does a fresh one.
    fresh = _master_for(sentinel, "vecna-test")
    assert fresh.incr("counter") == 1

    # The crashed master comes back as a replica of the new one.
    sentinel_set.replica.restart()
    sentinel_set.wait_ready(timeout=20)
    with sentinel_set.replica.client(decode_responses=True) as rejoined:
        assert rejoined.info("replication")["role"] == "slave"
        assert wait_until(lambda: rejoined.get("after"), timeout=10, what="resync") == "2"
    master.close()
    fresh.close()
    replica.close()


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cluster_set() -> Iterator[RedisClusterSet]:
    with RedisClusterSet() as cset:
        yield cset


def test_cluster_keys_and_eval(cluster_set: RedisClusterSet) -> None:
    ports = [p for _, p in cluster_set.startup_nodes]
    assert len(cluster_set.nodes) == 3
    assert cluster_set.url == (
        f"redis://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]},127.0.0.1:{ports[2]}/0"
    )
    with _cluster_client(cluster_set.startup_nodes) as client:
        keys = [f"key:{i}" for i in range(100)]
        for i, key in enumerate(keys):
            assert client.set(key, str(i)) is True
        owners = {_node_port_for_key(client, key) for key in keys}
        assert owners == set(ports)  # the keys really are spread over every master
        assert [client.get(key) for key in keys] == [str(i) for i in range(100)]

        script = (
            "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], ARGV[1])"
        )
        tagged = ["{job:42}:state", "{job:42}:attempts"]
        assert _keyslot(client, tagged[0]) == _keyslot(client, tagged[1])
        assert client.eval(script, 2, *tagged, 5) == 5
        assert client.eval(script, 2, *tagged, 5) == 10
        assert client.get(tagged[0]) == "5"


def test_cluster_node_crash_and_recovery() -> None:
    # A 1 s node timeout halves the time to notice the crash (~2 s) and to recover (~2 s).
    with RedisClusterSet(node_timeout_ms=1000) as cluster_set:
        victim, survivor = cluster_set.nodes[0], cluster_set.nodes[1]
        victim.kill()
        with survivor.client(decode_responses=True) as probe:
            wait_until(
                lambda: "cluster_state:fail" in probe.execute_command("CLUSTER", "INFO"),
                timeout=15,
                what="cluster to notice the crash",
            )
        victim.restart()  # same port, same nodes file: it rejoins with its slots
        cluster_set.wait_ready(timeout=20)
        with _cluster_client(cluster_set.startup_nodes) as client:
            assert client.set("after-recovery", "1") is True
