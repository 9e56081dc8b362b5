"""``RedisConfig.max_result_bytes``: a result over the limit fails its task for good."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Config, Server, Signature, State, TaskFailed

pytestmark = pytest.mark.anyio

LIMIT = 1000


async def test_result_over_the_limit_fails_without_retry(
    config: Config, rc_text: aioredis.Redis
) -> None:
    runs = f"{config.redis.key_prefix}:rl:runs"
    errors = f"{config.redis.key_prefix}:rl:errors"

    async def big(n: int) -> str:
        await rc_text.incr(runs)
        return "x" * n

    async def on_error(*args: Any) -> None:
        await rc_text.rpush(errors, json.dumps(list(args)))

    async with Server(tuned(config, max_result_bytes=LIMIT)) as srv:
        srv.register_tasks({"big": big, "on_error": on_error})
        async with running_worker(srv):
            small = await srv.send_task(Signature("big", args=[10]))
            assert await small.get(timeout=10) == "x" * 10
            too_big = await srv.send_task(
                Signature(
                    "big", args=[5000], retry_count=3, on_error=[Signature("on_error", args=["cb"])]
                )
            )
            with pytest.raises(TaskFailed) as info:
                await too_big.get(timeout=10)
            (error_args,) = await eventually(lambda: rc_text.lrange(errors, 0, -1), timeout=10)
        state = await too_big.get_state()
    assert info.value.error.startswith("ResultTooLarge: task 'big' returned a result of ")
    assert f"over the limit of {LIMIT} bytes" in info.value.error
    assert "max_result_bytes" in info.value.error
    assert state is not None
    assert state.state is State.FAILURE
    assert state.error == info.value.error  # the (small) failure state is stored
    assert int(await rc_text.get(runs) or 0) == 2  # small once, too_big once: not retried
    assert json.loads(error_args) == [info.value.error, "cb"]
