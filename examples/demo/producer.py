"""The demo producer: sends tasks to the demo worker and prints what comes back.

VECNA_BROKER=redis://127.0.0.1:6379/0 python -m examples.demo.producer
VECNA_BROKER=memory:// python -m examples.demo.producer    # no Redis: the worker runs in here too
"""

from __future__ import annotations

import logging

import anyio

from examples.demo.tasks import add, divide, flaky, server, slow_echo
from vecna_async import Arg, Signature, TaskFailed


async def main() -> None:
    in_process = server.config.broker.startswith("memory://")
    async with server, anyio.create_task_group() as tg:
        # memory:// lives in this process: only a worker in here can run the tasks
        worker = server.new_worker("demo-worker", concurrency=20)
        if in_process:
            print("memory://: no Redis; the worker runs in this process", flush=True)
            logging.basicConfig(level=logging.INFO, format="  worker: %(message)s")
            tg.start_soon(worker.launch)
        await send_and_print()
        worker.quit()


async def send_and_print() -> None:
    r = await server.send_task(Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]))
    print("add(1, 1) =", await r.get(timeout=10))

    typed = await add.send(2, 3)  # checked by mypy: add takes ints
    print("add.send(2, 3) ->", await typed.get(timeout=10))

    callback = Signature("multiply", args=[10])
    r = await server.send_task(Signature("add", args=[1, 1], on_success=[callback]))
    await r.get(timeout=10)
    print("multiply(add(1, 1), 10) =", await server.result(callback.id or "").get(timeout=10))

    results = await server.send_tasks([slow_echo.signature(f"echo {i}") for i in range(5)])
    print("five concurrent echoes:", [await x.get(timeout=10) for x in results])

    print("flaky:", await (await flaky.send("job-1")).get(timeout=10))

    failing = await divide.send(1, 0)
    try:
        await failing.get(timeout=10)
    except TaskFailed as exc:
        print("divide(1, 0) failed as expected:", exc.error)


if __name__ == "__main__":
    anyio.run(main)
