"""vecna_async, through its public API only (runs in the project's virtual environment).

Worker: ``server.new_worker(name, concurrency=100).launch()`` under anyio + uvloop, exactly what
``python -m vecna_async worker`` does. Producer: the typed handle's ``send`` (``send_task``),
``server.send_tasks`` for batches, ``AsyncResult.get`` for results (the shared pub/sub listener).
Delivery: at-least-once (leased claims, token-fenced batched acks); results stored by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from benchmarks.systems import _common
from vecna_async import AsyncResult, Config, Server

server = Server(Config(broker=_common.redis_url(), default_queue="bench"))


@server.task(name="bench")
async def bench(sent: float, sleep: float) -> float:
    return await _common.task_body(sent, sleep)


def worker() -> None:
    async def main() -> None:
        async with server:
            w = server.new_worker("bench", concurrency=_common.concurrency())
            _common.recorder().ready()
            await w.launch()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


class Client:
    batch_api = "server.send_tasks (one Lua call per batch)"

    async def open(self) -> None:
        await server.connect()

    async def close(self) -> None:
        await server.close()

    async def send(self, sent: float, sleep: float) -> AsyncResult[float]:
        return await bench.send(sent, sleep)

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await server.send_tasks([bench.signature(sent, sleep) for sent, sleep in items])

    async def result(self, handle: Any, timeout: float) -> Any:
        return await handle.get(timeout=timeout)


if __name__ == "__main__":
    _common.main(worker, Client)
