"""Limits across all workers: a task's ``concurrency_limit`` and ``rate_limit`` hold across every
worker and process of the queue (they are enforced by the claim, in Redis); a task over its limit
waits in its queue without holding up other tasks; a killed worker's share comes back when its
lease is reaped."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from tests.support.workers import counts, marker, worker_process
from vecna_async import Config, Server, Signature

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]
QUEUE = "vecna_tasks"


class Gauge:
    """Counts how many runs are inside at once, across the in-process workers of a test."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.starts: list[float] = []

    async def run(self, seconds: float) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        self.starts.append(time.monotonic())
        try:
            await anyio.sleep(seconds)
        finally:
            self.now -= 1


async def test_a_concurrency_limit_holds_across_workers(config: Config) -> None:
    gauge = Gauge()

    async def limited(i: int) -> int:
        await gauge.run(0.2)
        return i

    async with Server(config) as a, Server(config) as b:
        for srv in (a, b):
            srv.register_task("limited", limited)
        sent = [
            await a.send_task(Signature("limited", args=[i], concurrency_limit=2))
            for i in range(10)
        ]
        async with running_worker(a, 10), running_worker(b, 10):
            assert [await r.get(timeout=20) for r in sent] == list(range(10))
    assert gauge.most == 2


async def test_a_rate_limit_holds_across_workers(config: Config) -> None:
    gauge = Gauge()

    async def paced(i: int) -> int:
        await gauge.run(0.0)
        return i

    async with Server(config) as a, Server(config) as b:
        for srv in (a, b):
            srv.register_task("paced", paced)
        sent = [
            await a.send_task(Signature("paced", args=[i], rate_limit="4/s")) for i in range(10)
        ]
        async with running_worker(a, 10), running_worker(b, 10):
            assert [await r.get(timeout=20) for r in sent] == list(range(10))
    starts = sorted(gauge.starts)
    # at most 4 starts in any one-second window (Redis's clock and ours may differ a little:
    # 0.95 s leaves room for that without letting a fifth start in)
    for i in range(len(starts) - 4):
        assert starts[i + 4] - starts[i] >= 0.95, starts
    assert starts[-1] - starts[0] >= 1.9  # 10 starts at 4/s need two more windows


async def test_a_task_over_its_limit_does_not_hold_up_others(config: Config) -> None:
    release = anyio.Event()

    async def hog(i: int) -> int:
        await release.wait()
        return i

    async def quick(i: int) -> int:
        return i

    async with Server(config) as srv:
        srv.register_tasks({"hog": hog, "quick": quick})
        hogs = [
            await srv.send_task(Signature("hog", args=[i], concurrency_limit=1)) for i in range(5)
        ]
        quicks = [await srv.send_task(Signature("quick", args=[i])) for i in range(5)]
        async with running_worker(srv, 10):
            # sent after five held "hog" messages, they run at once
            assert [await r.get(timeout=10) for r in quicks] == list(range(5))
            pending = await srv.get_broker().get_pending_tasks(QUEUE)
            assert sorted(s.args[0] for s in pending) == [1, 2, 3, 4]  # held, still listed
            release.set()
            assert [await r.get(timeout=10) for r in hogs] == list(range(5))


@pytest.mark.redis_only("it kills a worker process; memory:// has no worker in another process")
async def test_a_killed_workers_share_comes_back_when_its_lease_is_reaped(
    config: Config, rc: aioredis.Redis, tmp_path: Path
) -> None:
    cfg = tuned(config, lease_timeout=1.0, heartbeat_interval=0.3)
    started = marker(cfg, "limited_started")
    async with Server(cfg) as srv:
        # two that would take 30 s on their first start: the first holds the share when its
        # worker is killed; the second waits for that share
        sent = [
            await srv.send_task(Signature("limited", args=[i, 30.0], concurrency_limit=1))
            for i in range(2)
        ]
        async with worker_process(cfg, tmp_path / "holder.log", 5) as holder:

            async def one_started() -> bool:
                return len(await counts(rc, started)) == 1

            await eventually(one_started, timeout=10)
            holder.kill()
        async with worker_process(cfg, tmp_path / "next.log", 5):
            # the dead worker's lease is reaped: its share is free, every task runs
            assert await sent[0].get(timeout=15) == 0  # redelivered (returns at once)

            # the second starts only now (30 s), and the quick ones wait for it: check the share
            # passed on, then stop
            async def second_started() -> bool:
                return 1 in await counts(rc, started)

            await eventually(second_started, timeout=15)
        assert (await counts(rc, started))[0] == 2


@pytest.mark.no_backend("Signature's argument checks")
async def test_limits_are_checked_at_send() -> None:
    with pytest.raises(ValueError, match="rate_limit '10 per second' is not valid"):
        Signature("x", rate_limit="10 per second")
    with pytest.raises(ValueError, match="concurrency_limit must be >= 0"):
        Signature("x", concurrency_limit=-1)
