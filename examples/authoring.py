"""Writing tasks: a Context, worker resources, a time limit, cancel, limits across workers, and a
worker for several queues.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/authoring.py
"""

from __future__ import annotations

from typing import Any

import anyio

from vecna_async import Config, Context, Server, TaskCanceled, TaskFailed

server = Server(Config.from_env())


@server.on_worker_startup
async def open_resources(state: dict[str, Any]) -> None:
    state["greeting"] = "hello"  # e.g. state["http"] = httpx.AsyncClient()


@server.on_worker_shutdown
async def close_resources(state: dict[str, Any]) -> None:
    state.clear()  # e.g. await state["http"].aclose()


@server.task(name="greet")
async def greet(ctx: Context, who: str) -> str:  # ctx is filled in by the worker
    return f"{ctx.state['greeting']} {who} (attempt {ctx.attempt}, queue {ctx.queue})"


@server.task(name="too_slow", timeout=0.2)
async def too_slow() -> None:
    await anyio.sleep(10)


@server.task(name="forever")
async def forever(ctx: Context) -> None:
    await ctx.report_progress("started")
    await anyio.sleep_forever()


running = 0
most = 0


@server.task(name="call_api", concurrency_limit=2, rate_limit="20/s")
async def call_api(i: int) -> int:
    global running, most
    running += 1
    most = max(most, running)
    await anyio.sleep(0.05)
    running -= 1
    return i


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("authoring", concurrency=10, queues=["urgent", "vecna_tasks"])
        tg.start_soon(worker.launch)

        print("greet:", await (await greet.send("world")).get(timeout=10))

        try:
            await (await too_slow.send()).get(timeout=10)
        except TaskFailed as exc:
            print("too_slow:", exc.error)

        r = await forever.send()
        async for value in r.progress_updates():
            print("forever reported:", value)
            break
        print("canceled:", await r.cancel())
        try:
            await r.get(timeout=10)
        except TaskCanceled:
            print("forever: CANCELED")

        results = [await call_api.send(i) for i in range(6)]
        print("call_api:", [await x.get(timeout=10) for x in results], f"at most {most} at once")
        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
