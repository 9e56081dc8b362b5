"""arq (peers' virtual environment).

Worker: ``arq.worker.Worker(max_jobs=100)`` run as ``arq`` itself runs it (``Worker.run()``), on a
uvloop event loop, ``poll_delay`` = BENCH_POLL (arq polls its queue; default 0.5 s). Producer:
``ArqRedis.enqueue_job`` (WATCH/MULTI per job; arq has no bulk enqueue, so a batch is 100 concurrent
``enqueue_job`` calls) and ``Job.result(poll_delay=BENCH_POLL)``.
Delivery: at-least-once ("pessimistic execution": a job stays in the queue until it finished; an
in-progress key guards it; a worker that dies leaves it to be rerun). Results kept 3600 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from arq.worker import Worker, func

from benchmarks.systems import _common

SETTINGS = RedisSettings.from_dsn(_common.redis_url())


async def bench(ctx: dict[str, Any], sent: float, sleep: float) -> float:
    return await _common.task_body(sent, sleep)


async def startup(ctx: dict[str, Any]) -> None:
    _common.recorder().ready()


def worker() -> None:
    import uvloop

    asyncio.set_event_loop(uvloop.new_event_loop())
    w = Worker(
        functions=[func(bench, name="bench")],
        redis_settings=SETTINGS,
        max_jobs=_common.concurrency(),
        poll_delay=_common.poll_interval(),
        keep_result=3600,
        on_startup=startup,
    )
    w.run()


class Client:
    batch_api = "asyncio.gather of 100 enqueue_job (no bulk API)"

    def __init__(self) -> None:
        self._redis: ArqRedis | None = None

    @property
    def redis(self) -> ArqRedis:
        assert self._redis is not None
        return self._redis

    async def open(self) -> None:
        self._redis = await create_pool(SETTINGS)

    async def close(self) -> None:
        await self.redis.aclose()

    async def send(self, sent: float, sleep: float) -> Job | None:
        return await self.redis.enqueue_job("bench", sent, sleep)

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await _common.gather_sends(self, items)

    async def result(self, handle: Any, timeout: float) -> Any:
        return await handle.result(timeout=timeout, poll_delay=_common.poll_interval())


if __name__ == "__main__":
    _common.main(worker, Client)
