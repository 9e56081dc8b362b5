"""Several queues per worker: ``new_worker(..., queues=["high", "default"])`` serves them in
strict order (the first is drained before a slot goes to the next) and wakes for work in any."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from tests.support.redis_procs import RedisClusterSet
from tests.support.vecna import running_worker
from vecna_async import Config, RedisConfig, Server, Signature

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


async def test_queues_are_served_in_strict_order(server: Server) -> None:
    order: list[str] = []

    async def note(label: str) -> None:
        order.append(label)

    server.register_task("note", note)
    low = [await server.send_task(Signature("note", args=[f"d{i}"])) for i in range(3)]
    high = [
        await server.send_task(Signature("note", args=[f"h{i}"], routing_key="high"))
        for i in range(3)
    ]
    async with running_worker(server, 1, queues=["high", "vecna_tasks"]):
        for r in [*high, *low]:
            await r.get(timeout=10)
    assert order == ["h0", "h1", "h2", "d0", "d1", "d2"]


async def test_an_idle_worker_wakes_for_any_of_its_queues(server: Server) -> None:
    async def echo(value: int) -> int:
        return value

    server.register_task("echo", echo)
    async with running_worker(server, 2, queues=["first", "second"]) as worker:
        assert worker.queues == ["first", "second"]
        for i in range(3):  # idle in between: each is picked up by a wake-up
            r = await server.send_task(Signature("echo", args=[i], routing_key="second"))
            with anyio.fail_after(0.4):  # well inside the poll period (0.5 s in these tests)
                assert await r.get() == i


async def test_new_worker_checks_its_queues(server: Server) -> None:
    with pytest.raises(TypeError, match="not both"):
        server.new_worker("w", 1, queues=["a"], queue="b")
    with pytest.raises(ValueError, match="distinct"):
        server.new_worker("w", 1, queues=["a", "a"])
    assert server.new_worker("w", 1).queues == [server.config.default_queue]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    with RedisClusterSet(masters=3) as c:
        yield c


@pytest.mark.redis_only("it is about Redis Cluster slots; memory:// is one store")
async def test_several_queues_on_a_cluster(
    cluster: RedisClusterSet, redis_config: RedisConfig
) -> None:
    """On a Cluster the queues live in different slots: the worker waits on each."""
    url = "redis://" + ",".join(f"{h}:{p}" for h, p in cluster.startup_nodes)
    async with Server(Config(broker=url, redis=redis_config)) as srv:

        async def echo(value: int) -> int:
            return value

        srv.register_task("echo", echo)
        async with running_worker(srv, 2, queues=["alpha", "omega"]):
            for queue in ("alpha", "omega", "omega", "alpha"):
                r = await srv.send_task(Signature("echo", args=[1], routing_key=queue))
                with anyio.fail_after(2):
                    assert await r.get() == 1
