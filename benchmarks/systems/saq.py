"""saq (peers' virtual environment).

Worker: ``saq.Worker(queue, concurrency=100)`` started as saq's own CLI starts it
(``queue.connect()``, ``worker.start()``), on uvloop. Each of the 100 slots blocks in BLMOVE, so
pickup is push-based. Producer: ``queue.enqueue`` (one Lua call per job; saq has no bulk enqueue, so
a batch is 100 concurrent ``enqueue`` calls) and ``Job.refresh(until_complete=...)``, which waits on
saq's pub/sub multiplexer.
Delivery: at-most-once by default (a job taken by a worker that dies is swept to ABORTED after its
timeout; it is retried only if the job has ``retries`` > 1). Results kept with the job (ttl 600 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from saq import Queue, Worker
from saq.job import TERMINAL_STATUSES, Job, Status
from saq.types import Context

from benchmarks.systems import _common

QUEUE_NAME = "bench"


async def bench(ctx: Context, *, sent: float, sleep: float) -> float:
    return await _common.task_body(sent, sleep)


async def startup(ctx: Context) -> None:
    _common.recorder().ready()


def worker() -> None:
    async def main() -> None:
        queue = Queue.from_url(_common.redis_url(), name=QUEUE_NAME)
        w = Worker(
            queue,
            functions=[("bench", bench)],
            concurrency=_common.concurrency(),
            startup=startup,
        )
        await queue.connect()
        try:
            await w.start()
        finally:
            await queue.disconnect()

    _common.run_async(main)


class Client:
    batch_api = "asyncio.gather of 100 queue.enqueue (no bulk API)"

    def __init__(self) -> None:
        self.queue = Queue.from_url(_common.redis_url(), name=QUEUE_NAME)
        self.stats = {"missed_completion_notices": 0}

    async def open(self) -> None:
        await self.queue.connect()

    async def close(self) -> None:
        await self.queue.disconnect()

    async def send(self, sent: float, sleep: float) -> Job | None:
        return await self.queue.enqueue("bench", sent=sent, sleep=sleep)

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await _common.gather_sends(self, items)

    async def result(self, handle: Any, timeout: float) -> Any:
        job: Job = handle
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                # until_complete waits for saq's completion notice (pub/sub); a notice published
                # before the multiplexer (re)subscribed is missed (saq closes it when its last
                # listener leaves), so wait in 1 s rounds that re-read the job
                await job.refresh(until_complete=1.0)
            except TimeoutError:
                self.stats["missed_completion_notices"] += 1
                if asyncio.get_running_loop().time() > deadline:
                    raise
                continue
            if job.status == Status.COMPLETE:
                return job.result
            if job.status in TERMINAL_STATUSES:
                raise RuntimeError(f"saq job {job.id} ended {job.status}: {job.error}")


if __name__ == "__main__":
    _common.main(worker, Client)
