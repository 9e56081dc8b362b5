"""Upgrades keep data: what vecna_async 0.1 left in Redis keeps working with this release.

``tests/data/v0_1_keys.json`` holds every key 0.1's own code wrote (made by
``tests/data/make_v0_1_fixture.py`` run against the 0.1 release): a task waiting, a task delayed, a
periodic task, a finished task, a dead letter, a chord with one member done and the other parked
for a worker that knows its task, and a chain whose second link was canceled ahead (0.1's
tombstone key). They are restored byte for byte (``RESTORE``) and a worker of this release takes
over.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker
from vecna_async import Config, RedisConfig, Server, State, TaskCanceled

pytestmark = pytest.mark.anyio
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "v0_1_keys.json"


async def test_what_0_1_wrote_keeps_working(redis_url: str, rc: aioredis.Redis) -> None:
    data = json.loads(FIXTURE.read_text())
    for key, entry in data["keys"].items():
        await rc.restore(key, entry["pttl"], base64.b64decode(entry["dump"]))
    queue = data["queue"]
    cfg = Config(broker=redis_url, redis=RedisConfig(key_prefix=data["prefix"]))
    calls: list[tuple[int, ...]] = []

    async def add(*values: int) -> int:
        calls.append(values)
        return sum(values)

    async def boom(value: int) -> int:
        return value

    async with Server(cfg) as srv:
        srv.register_tasks({"add": add, "add2": add, "boom": boom})
        broker = srv.get_broker()
        # read before anything runs: the finished result, the dead letter, the listings
        assert await srv.result("finished-1").get(timeout=5) == 2
        (dead,) = await broker.get_dead_letters(queue)
        assert dead.task_id == "dead-1"
        assert "lease expired" in dead.reason
        assert [s.id for s in await broker.get_pending_tasks(queue)][:1] == ["waiting-1"]
        assert await broker.queues.all() == {queue}  # 0.1's SET, converted
        assert await broker.requeue_dead_letters(queue) == 1
        async with running_worker(srv, 4):
            assert await srv.result("waiting-1").get(timeout=10) == 5
            assert await srv.result("delayed-1").get(timeout=10) == 9
            assert await srv.result("chain-0").get(timeout=10) == 2
            with pytest.raises(TaskCanceled):  # canceled ahead, with 0.1's tombstone
                await srv.result("chain-1").get(timeout=10)
            assert await srv.result("member-1").get(timeout=10) == 7
            assert await srv.result("chord-cb").get(timeout=10) == 110  # 100 + 3 + 7
            assert await srv.result("dead-1").get(timeout=10) == 5

            async def periodic_fired() -> bool:
                return (7, 7) in calls

            await eventually(periodic_fired, timeout=10)
        state = await srv.result("chain-1").get_state()
        assert state is not None
        assert state.state is State.CANCELED
        assert (10, 2) not in calls
