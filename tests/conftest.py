"""Fixtures: a private redis-server for the session, a fresh key space and Server per test.

**Both backends.** A test module marked ``pytestmark = pytest.mark.both_backends`` runs every
test twice, over Redis and over memory:// (``vecna_async.memory``): ``backend`` is "redis" or
"memory", and ``redis_url``, ``config``, ``server``, ``rc`` and ``rc_text`` follow it (over
memory, ``redis_url`` is a store of the test's own and ``rc``/``rc_text`` clients on it). A test
that cannot run in one process (it kills worker processes, builds a Cluster...) is marked
``@pytest.mark.redis_only("why")`` and runs over Redis only; the reason is required. A test
there that uses no broker at all says so: ``@pytest.mark.no_backend("what it checks")``.
Elsewhere ``backend`` is "redis".
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.support.redis_procs import RedisProcess
from vecna_async import Config, RedisConfig, Server, memory

BACKENDS = ("redis", "memory")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=",".join(BACKENDS),
        help="the backends both_backends modules run over (nox -s lowest: redis only, since "
        "memory:// runs the same scripts and its dependency is not a runtime one)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run each test of the module over Redis and over memory://"
    )
    config.addinivalue_line(
        "markers", "redis_only(reason): in a both_backends module, run over Redis only, because"
    )
    config.addinivalue_line(
        "markers", "no_backend(what): in a both_backends module, a test that uses no broker"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_backends") is None:
        return
    only = metafunc.definition.get_closest_marker("redis_only")
    if only is not None and not (only.args and isinstance(only.args[0], str) and only.args[0]):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: redis_only needs a reason")
    chosen = tuple(metafunc.config.getoption("backends").split(","))
    params = ("redis",) if only is not None else tuple(b for b in BACKENDS if b in chosen)
    metafunc.parametrize("backend", params, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test of a both_backends module runs over both or says why not: one that never asks
    for a backend-following fixture would otherwise run over Redis alone, unnoticed."""
    for item in items:
        if item.get_closest_marker("both_backends") is None:
            continue
        marked = item.get_closest_marker("redis_only") or item.get_closest_marker("no_backend")
        if marked is None and "backend" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(
                f"{item.nodeid}: in a both_backends module, use the config/server/redis_url "
                "fixtures, or mark it redis_only('why') or no_backend('what it checks')"
            )


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Where this test's Server keeps its data: "redis" or "memory"."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def redis_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's broker URL: the session's redis-server, flushed; or a memory:// store of the
    test's own, dropped afterwards."""
    if backend == "memory":
        url = f"memory://t{uuid.uuid4().hex[:12]}"
        yield url
        memory.discard(url)
        return
    proc: RedisProcess = request.getfixturevalue("redis_proc")
    client = redis.Redis(host=proc.host, port=proc.port)
    client.flushall()
    client.close()
    yield proc.url


@pytest.fixture
def redis_config() -> RedisConfig:
    """Short leases and polls so delivery tests finish quickly; tests may override it."""
    return RedisConfig(
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        lease_timeout=2.0,
        heartbeat_interval=0.5,
        normal_tasks_poll_period=500,
        delayed_tasks_poll_period=500,
    )


@pytest.fixture
def config(redis_url: str, redis_config: RedisConfig) -> Config:
    return Config(broker=redis_url, results_expire_in=600, shutdown_grace=5.0, redis=redis_config)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    async with Server(config) as srv:
        yield srv
