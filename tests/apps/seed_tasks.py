"""The seed's example tasks (``add``, ``multiply``, ``panic_task`` ...) plus small recording tasks
the seed-scenario tests inspect.

The worker runs in the test's own process and event loop, so the recording tasks write to the
module-level ``STATE``; call ``reset()`` before each test (the tests do it in a fixture).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from vecna_async import RetryTaskLater, Server

BARRIER_TIMEOUT = 5.0
"""How long a ``rendezvous`` task waits for the others before it gives up (and fails)."""


@dataclass
class Recorded:
    """What the recording tasks saw."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    """Each ``record(*args)`` call's args, in order."""
    times: dict[str, list[float]] = field(default_factory=dict)
    """``time.monotonic()`` of every run of ``flaky`` / ``retry_later``, by key."""
    thread_ids: list[int] = field(default_factory=list)
    """``threading.get_ident()`` of every ``sync_add`` run."""
    running: int = 0
    max_running: int = 0
    arrived: int = 0
    barrier: anyio.Event | None = None


STATE = Recorded()


def reset() -> None:
    """Forget everything recorded (a fresh ``STATE``)."""
    global STATE
    STATE = Recorded()


# -- the seed's examples -----------------------------------------------------------------------
async def add(*args: int) -> int:
    return sum(args)


async def multiply(*args: int) -> int:
    product = 1
    for a in args:
        product *= a
    return product


async def sum_ints(numbers: list[int]) -> int:
    return sum(numbers)


async def sum_floats(numbers: list[float]) -> float:
    return sum(numbers)


async def concat(strs: list[str]) -> str:
    return "".join(strs)


async def split(s: str) -> list[str]:
    return s.split()


async def panic_task() -> None:
    raise RuntimeError("oops")


async def multiple_returns(a: int, b: str) -> tuple[int, str]:
    return a, b


def sync_add(a: int, b: int) -> int:
    STATE.thread_ids.append(threading.get_ident())
    return a + b


# -- recording tasks ---------------------------------------------------------------------------
async def record(*args: Any) -> None:
    """Remember its args (callback tests read ``STATE.calls``)."""
    STATE.calls.append(args)


async def echo(*args: Any) -> list[Any]:
    """Return the args it got (after the worker's checks of typed ``Arg`` values)."""
    return list(args)


async def labeled(label: str, a: int) -> str:
    """Plain values checked against annotations: ``a`` must be an int."""
    return f"{label}={a}"


def _attempt(key: str) -> int:
    times = STATE.times.setdefault(key, [])
    times.append(time.monotonic())
    return len(times)


async def flaky(key: str, failures: int) -> int:
    """Fail the first ``failures`` runs (per key) with RuntimeError, then return the run count."""
    n = _attempt(key)
    if n <= failures:
        raise RuntimeError(f"flaky failure {n}")
    return n


async def retry_later(key: str, times: int) -> int:
    """Ask for a re-run after 0.2 s the first ``times`` runs, then return the run count."""
    n = _attempt(key)
    if n <= times:
        raise RetryTaskLater("not yet", delay=0.2)
    return n


async def track(seconds: float) -> None:
    """Count how many ``track`` tasks run at once (``STATE.max_running``)."""
    STATE.running += 1
    STATE.max_running = max(STATE.max_running, STATE.running)
    try:
        await anyio.sleep(seconds)
    finally:
        STATE.running -= 1


async def rendezvous(n: int) -> int:
    """Wait until ``n`` rendezvous tasks run at the same time; fail if they never do."""
    if STATE.barrier is None:
        STATE.barrier = anyio.Event()
    barrier = STATE.barrier
    STATE.arrived += 1
    STATE.running += 1
    STATE.max_running = max(STATE.max_running, STATE.running)
    try:
        if STATE.arrived >= n:
            barrier.set()
        with anyio.fail_after(BARRIER_TIMEOUT):
            await barrier.wait()
    finally:
        STATE.running -= 1
    return STATE.arrived


SEED_TASKS: dict[str, Any] = {
    "add": add,
    "multiply": multiply,
    "sum_ints": sum_ints,
    "sum_floats": sum_floats,
    "concat": concat,
    "split": split,
    "panic_task": panic_task,
    "multiple_returns": multiple_returns,
    "sync_add": sync_add,
    "record": record,
    "echo": echo,
    "labeled": labeled,
    "flaky": flaky,
    "retry_later": retry_later,
    "track": track,
    "rendezvous": rendezvous,
}


def register_seed_tasks(server: Server) -> None:
    """Register every task above under its own name."""
    server.register_tasks(SEED_TASKS)
