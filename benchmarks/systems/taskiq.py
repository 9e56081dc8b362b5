"""taskiq + taskiq-redis (their own virtual environment: taskiq-redis 1.2 needs redis-py 8, arq
needs redis-py < 6).

Broker (``BENCH_TASKIQ_BROKER``): ``stream`` (default) = ``RedisStreamBroker``, the one taskiq-redis
documents as supporting acknowledgements: at-least-once (XREADGROUP, XACK after the result is saved,
XAUTOCLAIM of messages idle for 10 min); ``list`` = ``ListQueueBroker`` (LPUSH/BRPOP, at-most-once).
Results: ``RedisAsyncResultBackend(result_ex_time=3600)``.
Worker: taskiq's own CLI, ``taskiq worker ... --workers 1 --max-async-tasks 100`` (it runs uvloop by
itself when installed). Producer: ``task.kiq()`` (no bulk API: a batch is 100 concurrent ``kiq``)
and ``wait_result(check_interval=BENCH_POLL)`` (taskiq polls for results; default 0.2 s).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from taskiq import AsyncBroker, AsyncTaskiqTask, TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.systems import _common

MODE = os.environ.get("BENCH_TASKIQ_BROKER", "stream")
_url = _common.redis_url()
_backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(_url, result_ex_time=3600)
broker: AsyncBroker = (
    ListQueueBroker(_url, queue_name="bench")
    if MODE == "list"
    else RedisStreamBroker(_url, queue_name="bench")
).with_result_backend(_backend)


@broker.task(task_name="bench")
async def bench(sent: float, sleep: float) -> float:
    return await _common.task_body(sent, sleep)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(state: TaskiqState) -> None:
    _common.recorder().ready()


def worker() -> None:
    argv = [sys.executable, "-m", "taskiq", "worker", "benchmarks.systems.taskiq:broker"]
    argv += ["--workers", "1", "--max-async-tasks", str(_common.concurrency())]
    argv += ["--log-level", "WARNING"]
    os.execv(sys.executable, argv)


class Client:
    batch_api = "asyncio.gather of 100 task.kiq (no bulk API)"

    async def open(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def send(self, sent: float, sleep: float) -> AsyncTaskiqTask[float]:
        return await bench.kiq(sent, sleep)

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await _common.gather_sends(self, items)

    async def result(self, handle: Any, timeout: float) -> Any:
        task: AsyncTaskiqTask[float] = handle
        res = await task.wait_result(check_interval=_common.poll_interval(), timeout=timeout)
        if res.is_err:
            raise RuntimeError(f"taskiq task failed: {res.error}")
        return res.return_value


if __name__ == "__main__":
    _common.main(worker, Client)
