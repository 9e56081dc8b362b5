"""Send tasks and run a worker in one process: the smallest complete program.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/quickstart.py
"""

from __future__ import annotations

import anyio

from vecna_async import Arg, Config, Server, Signature

server = Server(Config.from_env())


@server.task(name="add")
async def add(*numbers: int) -> int:
    return sum(numbers)


@server.task(name="divmod")
async def divide(a: int, b: int) -> tuple[int, int]:
    return a // b, a % b  # several return values come back as a tuple


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("quickstart", concurrency=10)
        tg.start_soon(worker.launch)

        # The seed's typed arguments, checked by the worker before the task runs...
        r = await server.send_task(Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]))
        print("add(1, 1) =", await r.get(timeout=5))
        # ...plain values...
        r = await server.send_task(Signature("add", args=[2, 3]))
        print("add(2, 3) =", await r.get(timeout=5))
        # ...or the typed handle, checked by mypy.
        q = await divide.send(7, 2)
        print("divmod(7, 2) =", await q.get(timeout=5))
        state = await q.get_state()
        print("state:", state.state if state else None)

        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
