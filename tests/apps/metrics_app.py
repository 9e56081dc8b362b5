"""A Server for the metrics tests' worker subprocesses (configured from ``VECNA_*``): a task
that succeeds, one that fails, one that retries once, and one that sleeps."""

from __future__ import annotations

import anyio

from vecna_async import Config, Context, RetryTaskLater, Server

server = Server(Config.from_env())


@server.task(name="add")
async def add(a: int, b: int) -> int:
    return a + b


@server.task(name="boom")
async def boom() -> None:
    raise ValueError("bad input")


@server.task(name="later")
async def later(ctx: Context) -> int:
    if ctx.attempt == 1:
        raise RetryTaskLater("not yet", delay=0.05)
    return ctx.attempt


@server.task(name="nap")
async def nap(seconds: float) -> None:
    await anyio.sleep(seconds)
