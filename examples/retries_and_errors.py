"""Retries with back-off, RetryTaskLater, error callbacks and the worker's error handler.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/retries_and_errors.py
"""

from __future__ import annotations

import anyio

from vecna_async import Config, RetryTaskLater, Server, Signature, TaskFailed

server = Server(Config.from_env())
calls: dict[str, int] = {}


@server.task(name="flaky")
async def flaky(key: str) -> str:
    calls[key] = calls.get(key, 0) + 1
    if calls[key] < 2:
        raise ConnectionError("upstream hiccup")  # retried after 1 s (Fibonacci: 1, 2, 3, 5...)
    return f"ok after {calls[key]} calls"


@server.task(name="rate_limited")
async def rate_limited() -> str:
    calls["rate"] = calls.get("rate", 0) + 1
    if calls["rate"] < 3:
        raise RetryTaskLater("429 from the API", delay=0.1)  # does not use up retry_count
    return "done"


@server.task(name="always_fails")
async def always_fails() -> None:
    raise ValueError("bad input")


@server.task(name="report")
async def report(error: str, where: str) -> None:
    print(f"on_error callback: {error!r} in {where}")  # the error string comes first


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("retries", concurrency=10)
        worker.set_error_handler(lambda sig, exc: print(f"error handler: {sig.name}: {exc}"))
        tg.start_soon(worker.launch)

        r = await server.send_task(Signature("flaky", args=["a"], retry_count=3))
        print("flaky:", await r.get(timeout=10))

        r = await server.send_task(Signature("rate_limited"))
        print("rate_limited:", await r.get(timeout=10))

        failing = Signature("always_fails", on_error=[Signature("report", args=["checkout"])])
        r = await server.send_task(failing)
        try:
            await r.get(timeout=10)
        except TaskFailed as exc:
            print("always_fails raised TaskFailed:", exc.error)

        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
