"""The demo's tasks. Run a worker for them with::

VECNA_BROKER=redis://127.0.0.1:6379/0 vecna-async worker examples.demo.tasks:server
"""

from __future__ import annotations

import anyio

from vecna_async import Config, RetryTaskLater, Server

server = Server(Config.from_env())  # VECNA_BROKER, VECNA_DEFAULT_QUEUE, ...


@server.task(name="add")
async def add(*numbers: int) -> int:
    return sum(numbers)


@server.task(name="multiply")
async def multiply(*numbers: int) -> int:
    product = 1
    for n in numbers:
        product *= n
    return product


@server.task(name="slow_echo")
async def slow_echo(text: str, seconds: float = 0.2) -> str:
    await anyio.sleep(seconds)
    return text


@server.task(name="divide")
async def divide(a: float, b: float) -> float:
    return a / b


_attempts: dict[str, int] = {}


@server.task(name="flaky")
async def flaky(key: str) -> str:
    """Asks to be retried twice, then succeeds (RetryTaskLater does not use up retry_count)."""
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] < 3:
        raise RetryTaskLater("not yet", delay=0.1)
    return f"{key} done after {_attempts[key]} attempts"
