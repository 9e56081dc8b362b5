"""Writing tasks the way arq/saq/taskiq/Celery users expect: a Context (the task's own id,
attempt, queue, headers, eta, worker, resources), worker resources opened and closed by hooks,
time limits, and progress reports a web page can follow."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from tests.support.vecna import eventually, running_worker
from vecna_async import (
    Config,
    Context,
    Server,
    Signature,
    State,
    TaskFailed,
    WorkerStartupFailed,
)
from vecna_async.exceptions import RetryTaskLater

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


async def test_a_task_gets_its_context(server: Server) -> None:
    seen: list[Context] = []

    @server.task(name="look", retry_count=1, retry_timeout=0)
    async def look(ctx: Context, n: int) -> int:
        seen.append(ctx)
        if ctx.attempt == 1:
            raise RuntimeError("once more")
        return n * ctx.attempt

    eta = datetime.now(UTC) + timedelta(milliseconds=300)
    async with running_worker(server, 2) as worker:
        sig = look.signature(21)
        sig.headers = {"trace": "abc"}
        sig.eta = eta
        r = await server.send_task(sig)
        assert await r.get(timeout=10) == 42
    first, second = seen
    assert (first.task_id, first.name, first.attempt) == (r.task_id, "look", 1)
    assert second.attempt == 2
    assert first.queue == server.config.default_queue
    assert first.headers == {"trace": "abc"}
    assert first.eta is not None
    assert abs((first.eta - eta).total_seconds()) < 0.01
    assert first.worker == worker.name


async def test_retry_task_later_counts_as_an_attempt(server: Server) -> None:
    attempts: list[int] = []

    @server.task(name="later")
    async def later(ctx: Context) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryTaskLater("not yet", delay=0)
        return ctx.attempt

    async with running_worker(server, 2):
        assert await (await later.send()).get(timeout=10) == 3
    assert attempts == [1, 2, 3]


async def test_a_context_handle_runs_locally_too(server: Server) -> None:
    @server.task(name="local")
    async def local(ctx: Context, n: int) -> str:
        await ctx.report_progress("dropped")
        return f"{ctx.task_id}:{n}"

    assert await local(3) == "local:3"  # type: ignore[misc]


async def test_worker_resources_open_before_and_close_after(config: Config) -> None:
    events: list[str] = []
    server = Server(config)

    @server.on_worker_startup
    async def open_pool(state: dict[str, Any]) -> None:
        events.append("open")
        state["pool"] = "the pool"

    @server.on_worker_shutdown
    async def close_pool(state: dict[str, Any]) -> None:
        events.append(f"close {state['pool']}")

    @server.task(name="use")
    async def use(ctx: Context) -> str:
        events.append("run")
        return str(ctx.state["pool"])

    async with server, running_worker(server, 2):
        assert await (await use.send()).get(timeout=10) == "the pool"
    assert events == ["open", "run", "close the pool"]


async def test_a_failing_startup_stops_the_worker_before_it_claims(config: Config) -> None:
    server = Server(config)
    closed: list[str] = []

    @server.on_worker_startup
    async def broken(state: dict[str, Any]) -> None:
        raise ConnectionRefusedError("database at db:5432 refused")

    @server.on_worker_shutdown
    async def close(state: dict[str, Any]) -> None:
        closed.append("closed")

    @server.task(name="never")
    async def never() -> None:
        raise AssertionError("must not run")

    async with server:
        r = await never.send()
        with pytest.raises(WorkerStartupFailed, match="database at db:5432 refused"):
            await server.new_worker("w", 2).launch()
        state = await r.get_state()
        assert state is not None
        assert state.state is State.PENDING  # nothing was claimed
    assert closed == ["closed"]


async def test_an_overrunning_task_fails_with_task_timeout(server: Server) -> None:
    runs: list[int] = []

    @server.task(name="slow", timeout=0.2, retry_count=1, retry_timeout=0)
    async def slow(n: int) -> int:
        runs.append(n)
        await anyio.sleep(30)
        return n

    async with running_worker(server, 2):
        with pytest.raises(TaskFailed, match=r"TaskTimeout.*timeout of 0\.2s") as info:
            await (await slow.send(1)).get(timeout=10)
    assert "TaskTimeout" in info.value.error
    assert runs == [1, 1]  # retried once, as it had a retry left


async def test_an_overrunning_thread_task_is_abandoned_and_its_slot_freed(server: Server) -> None:
    release = threading.Event()

    def blocking() -> str:
        release.wait(30)
        return "late"

    async def quick() -> int:
        return 5

    server.register_tasks({"blocking": blocking, "quick": quick})
    try:
        async with running_worker(server, 1):
            slow = await server.send_task(Signature("blocking", timeout=0.2))
            with pytest.raises(TaskFailed, match="TaskTimeout"):
                await slow.get(timeout=10)
            assert await (await server.send_task(Signature("quick"))).get(timeout=10) == 5
    finally:
        release.set()


async def test_progress_is_stored_and_pushed_until_the_task_finishes(
    server: Server, config: Config
) -> None:
    steps: list[anyio.Event] = [anyio.Event() for _ in range(3)]

    @server.task(name="work")
    async def work(ctx: Context) -> str:
        for i, go in enumerate(steps):
            await go.wait()
            await ctx.report_progress({"done": i + 1, "of": 3})
        return "finished"

    async with running_worker(server, 2), Server(config) as other:
        r = await work.send()
        assert await r.progress() is None
        seen_here: list[Any] = []
        seen_there: list[Any] = []

        async def follow(values: list[Any], result: Any) -> None:
            async for value in result.progress_updates():
                values.append(value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, seen_here, r)
            tg.start_soon(follow, seen_there, other.result(r.task_id))
            for i, go in enumerate(steps):
                await anyio.sleep(0.05)  # the followers subscribe (a value is never skipped)
                go.set()

                async def reported(n: int = i + 1) -> bool:
                    return bool(await r.progress() == {"done": n, "of": 3})

                await eventually(reported, timeout=10)
        # both iterations ended by themselves when the task finished
        assert await r.get(timeout=10) == "finished"
    for values in (seen_here, seen_there):
        assert values[-1] == {"done": 3, "of": 3}
        assert [v["done"] for v in values] == sorted(v["done"] for v in values)
        assert {v["done"] for v in values} >= {2, 3}
    assert await r.progress() == {"done": 3, "of": 3}
