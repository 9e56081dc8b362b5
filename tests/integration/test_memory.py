"""memory:// itself: what it refuses, how its stores are shared, and its msgpack stand-in.

Its behaviour (sending, workers, workflows, delayed, periodic, cancel, limits ...) is the
``both_backends`` modules' job: they run every scenario over memory:// as over Redis.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any

import anyio
import msgspec
import pytest

from tests.support.backends import plain_client
from tests.support.vecna import clean_env, running_worker
from tests.support.workers import run_cli
from vecna_async import Config, ConfigError, RedisConfig, Server, Signature, memory
from vecna_async.pinned import PinnedConnection

pytestmark = pytest.mark.anyio

REFUSED = "memory:// keeps its data in this process: run the worker in the same process"


@pytest.fixture
def url() -> Any:
    name = "memtest"
    yield f"memory://{name}"
    memory.discard(f"memory://{name}")


def memory_cli(*argv: str, broker: str = "memory://") -> subprocess.CompletedProcess[str]:
    env = dict(clean_env(), VECNA_BROKER=broker)
    return run_cli([sys.executable, "-m", "vecna_async", *argv], env, timeout=60)


@pytest.mark.parametrize(
    "argv",
    [
        ("worker", "tests.apps.delivery_app:server"),
        ("worker", "tests.apps.delivery_app:server", "--processes", "2"),
        ("check", "tests.apps.delivery_app:server"),
        ("check", "--broker", "memory://"),
    ],
    ids=["worker", "processes", "check", "check-broker"],
)
def test_the_command_line_refuses_memory(argv: tuple[str, ...]) -> None:
    """A worker (or a probe) in another process would see none of the app's data: refused, on
    one line, exit status 1, before anything starts."""
    done = memory_cli(*argv)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"vecna-async: error: {REFUSED}"), done.stderr
    assert "or use a Redis URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_memory_urls() -> None:
    assert Config(broker="memory://").backend_url == "memory://"
    Config(broker="memory://a", result_backend="memory://b")  # two stores: a separate backend
    for bad in ("memory://a/0", "memory://a?db=1", "memory://user@a"):
        with pytest.raises(ConfigError, match="expected memory:// or memory://<name>"):
            Config(broker=bad)


def test_what_memory_cannot_do_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="memory:// for one and Redis for the other"):
        Config(broker="memory://", result_backend="redis://localhost/0")
    with pytest.raises(ConfigError, match="memory:// for one and Redis for the other"):
        Config(broker="redis://localhost/0", result_backend="memory://")
    with pytest.raises(ConfigError, match="wait_replicas: memory:// has no replicas"):
        Config(broker="memory://", redis=RedisConfig(wait_replicas=1))
    # credentials are ignored (a deployment's VECNA_REDIS_PASSWORD may be set in tests)
    Config(broker="memory://", redis=RedisConfig(password="secret"))


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lupa" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'vecna_async\[memory\]'"):
        Config(broker="memory://")


async def test_servers_with_one_url_share_a_store(url: str) -> None:
    """A producer Server and a worker Server of the same process meet in the store; another
    name is another store; a discarded store starts empty."""
    cfg = Config(broker=url, redis=RedisConfig(normal_tasks_poll_period=200))
    producer, consumer = Server(cfg), Server(cfg)

    @consumer.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    async with producer, consumer, running_worker(consumer):
        r = await producer.send_task(Signature("double", args=[21]))
        assert await r.get(timeout=5) == 42
        async with Server(msgspec.structs.replace(cfg, broker=f"{url}-other")) as elsewhere:
            assert await elsewhere.result(r.task_id).get_state() is None
    memory.discard(url)
    async with Server(cfg) as later:
        assert await later.result(r.task_id).get_state() is None


async def test_a_separate_memory_backend(url: str) -> None:
    """States on one store, messages on another: the separate-backend path, in process."""
    backend = f"{url}-results"
    cfg = Config(broker=url, result_backend=backend, redis=RedisConfig(key_prefix="sep"))
    server = Server(cfg)

    @server.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    try:
        async with server, running_worker(server):
            r = await add.send(1, 2)
            assert await r.get(timeout=5) == 3
            client = plain_client(backend)
            assert await client.exists(server.keys.queue(r.queue).state(r.task_id)) == 1
            await client.aclose()
    finally:
        memory.discard(backend)


async def test_no_startup_checks_and_no_pinned_connections(url: str) -> None:
    """INFO and CONFIG are not asked (nothing to warn about in this process); the hot callers
    take redis-py's public path, since fakeredis has no socket to write RESP on."""
    async with Server(Config(broker=url)) as server, server.connection() as rt:
        assert await rt.preflight() == []
        pinned = PinnedConnection(rt.broker_clients.main)
        assert await pinned.execute("PING") is True
        assert pinned._conn is None  # never pinned
        assert rt.broker_clients.target.describe() == url


VALUES: list[Any] = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**40 + 3, 2**53,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**53),
    0.5, -2.25, 1e300, -1e-300, 3.0,
    "", "a", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "v" * 65536, "é€ unicode",
    b"\x00bin\xff", True, False, [], [1, "two", [3.5]], {"k": "v", "n": 2},
]  # fmt: skip


async def test_the_msgpack_stand_in_reads_what_msgspec_writes(url: str) -> None:
    """lua/_cmsgpack.lua decodes every msgpack type our arguments use, at every width."""
    client = plain_client(url)
    try:
        for value in VALUES:
            packed = msgspec.msgpack.encode([value])
            if isinstance(value, bytes):
                same = "return cmsgpack.unpack(ARGV[1])[1] == ARGV[2] and 1 or 0"
                assert await client.eval(f"{memory._decoder()}\n{same}", 0, packed, value) == 1
                continue
            reply = await client.eval(
                f"{memory._decoder()}\nreturn cjson.encode(cmsgpack.unpack(ARGV[1]))", 0, packed
            )
            decoded = msgspec.json.decode(reply)[0]
            if isinstance(value, float):
                assert decoded == pytest.approx(value, rel=1e-14)
            elif value == {} or value == []:
                assert decoded in ({}, [])  # cjson cannot tell an empty table's kind
            else:
                assert decoded == value
    finally:
        await client.aclose()


async def test_a_worker_in_the_tests_event_loop_with_anyio(url: str) -> None:
    """The README's fixture shape: a Server on memory:// and a worker in a task group."""
    server = Server(Config(broker=url))

    @server.task(name="greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("test", concurrency=5)
        tg.start_soon(worker.launch)
        assert await (await greet.send("you")).get(timeout=5) == "hello you"
        worker.quit()


def test_the_in_process_benchmark_runs(redis_url: str) -> None:
    """``benchmarks/in_process.py``, which the README quotes, keeps running on both backends."""
    from benchmarks.in_process import main

    out = main(["--url", redis_url, "--count", "200", "--round-trips", "20"])
    assert "| redis-server (loopback) |" in out
    assert "| memory:// |" in out
