"""streaq (peers' virtual environment; streaq talks to Redis through coredis, not redis-py).

Worker: ``streaq.Worker(concurrency=100)`` run with ``run_sync()`` (what ``streaq run`` does), with
``anyio_kwargs={"use_uvloop": True}``. Producer: ``task.enqueue(...)`` (awaited), batches through
``worker.enqueue_many`` (one pipeline), results through ``Task.result()`` (pub/sub per wait).
Delivery: at-least-once (Redis streams with a consumer group; messages of a worker that stops
renewing are reclaimed after ``idle_timeout``, 60 s). Results kept 5 min (streaq's default ttl).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from streaq import Worker
from streaq.task import Task

from benchmarks.systems import _common


@asynccontextmanager
async def lifespan() -> AsyncIterator[None]:
    _common.recorder().ready()
    yield None


worker_app: Worker[None] = Worker(
    redis_url=_common.redis_url(),
    concurrency=_common.concurrency(),
    queue_name="bench",
    lifespan=lifespan,
    anyio_kwargs={"use_uvloop": True},
)


@worker_app.task(name="bench")
async def bench(sent: float, sleep: float) -> float:
    return await _common.task_body(sent, sleep)


def worker() -> None:
    worker_app.run_sync()


class Client:
    batch_api = "worker.enqueue_many (one pipeline)"

    def __init__(self) -> None:
        self._stack = AsyncExitStack()

    async def open(self) -> None:
        await self._stack.enter_async_context(worker_app)  # `async with worker:` in streaq's docs

    async def close(self) -> None:
        await self._stack.aclose()

    async def send(self, sent: float, sleep: float) -> Task[Any, float]:
        return await bench.enqueue(sent, sleep)

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await worker_app.enqueue_many([bench.enqueue(sent, sleep) for sent, sleep in items])

    async def result(self, handle: Any, timeout: float) -> Any:
        task: Task[Any, float] = handle
        res = await task.result(timeout=int(timeout))
        return res.result


if __name__ == "__main__":
    _common.main(worker, Client)
