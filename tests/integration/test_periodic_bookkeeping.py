"""Periodic bookkeeping is bounded (issue 11, item 8): a tick is deduplicated by comparing it,
in the enqueue script itself, with the last tick the queue took for the code (one HASH per code
and queue), instead of leaving a 24 h request key per tick. Exactly-once with several schedulers
is in test_periodic.py; here: the keys left behind, and the compare itself."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually
from vecna_async import Config, Server, Signature
from vecna_async.broker.redis import _packed
from vecna_async.messages import TaskMessage, encode
from vecna_async.scheduler.periodic import FIRING_DEDUP_SECONDS
from vecna_async.scripts import script

pytestmark = pytest.mark.anyio
QUEUE = "vecna_tasks"


async def test_many_ticks_leave_one_key_per_code(config: Config, rc: aioredis.Redis) -> None:
    async with AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(Server(config)) for _ in range(3)]
        for srv in servers:  # three schedulers fire the same ticks
            await stack.enter_async_context(srv.scheduler())
        code = await servers[0].send_periodic_task("* * * * * *", Signature("nobody_runs_it"))
        q = servers[0].keys.queue(QUEUE)

        async def fired() -> int:
            return int(await rc.zcard(q.ready))

        await eventually(lambda: _at_least(fired, 4), timeout=15)
        assert await servers[0].cancel_periodic_task(code)
    ready = await rc.zrange(q.ready, 0, -1)
    assert len(ready) == len(set(ready))  # one message per tick, whichever scheduler fired it
    prefix = config.redis.key_prefix
    leftovers = [k async for k in rc.scan_iter(f"{prefix}:*req:periodic*")]
    assert leftovers == []
    fired_key = q.periodic_fired(code)
    last = int(await rc.hget(fired_key, "0") or 0)
    assert abs(last / 1000 - time.time()) < 10
    assert 0 < await rc.ttl(fired_key) <= FIRING_DEDUP_SECONDS
    assert [k async for k in rc.scan_iter(f"{prefix}:*fired*")] == [fired_key.encode()]


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def test_the_tick_compare_and_the_enqueue_are_one_step(
    server: Server, rc: aioredis.Redis
) -> None:
    q = server.keys.queue(QUEUE)
    meta = [server.keys.packed_queue(QUEUE), server.keys.sched_channel]

    def fire(tick: int, chunk: int = 0) -> Any:
        task_id = f"{tick}-{chunk}"
        body = encode(TaskMessage(id=task_id, name="t", queue=QUEUE))
        msg = _packed([task_id, "t", body, 0, 0, 0, "", "1"])
        args = [*meta, "code-1", chunk, tick, 60, 600, msg]
        return script("enqueue_tick")(rc, [q.ready], args)

    assert await fire(2000) == 1
    assert await fire(2000) == -1  # the same tick again (another scheduler, a retry)
    assert await fire(1000) == -1  # an older tick (a scheduler that stalled)
    assert await fire(2000, chunk=100) == 1  # another chunk of the same tick
    assert await fire(3000) == 1
    assert await rc.hgetall(q.periodic_fired("code-1")) == {b"0": b"3000", b"100": b"2000"}
    # a firing a 0.2 scheduler made (its request key) is not repeated
    await rc.set(q.request_prefix + "periodic:code-1:4000:0", "1", ex=60)
    assert await fire(4000) == -1
    assert await rc.zcard(q.ready) == 3
