"""Middleware around sends and runs, with a real Redis and a real worker: the order of the hooks,
their arguments for every outcome, and a middleware that raises losing nothing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import (
    AsyncResult,
    Chain,
    Chord,
    Config,
    Context,
    Group,
    RetryTaskLater,
    Server,
    Signature,
    TaskFailed,
)
from vecna_async.middleware import Middleware, Outcome

pytestmark = pytest.mark.anyio


@dataclass
class Event:
    who: str
    hook: str
    task: str
    args: tuple[Any, ...] = ()


@dataclass
class Recorder(Middleware):
    who: str
    events: list[Event] = field(default_factory=list)

    async def before_send(self, signature: Signature) -> None:
        signature.headers[f"x-{self.who}"] = "sent"  # travels with the message
        self.events.append(Event(self.who, "before_send", signature.name, (signature.id,)))

    async def after_send(
        self, signature: Signature, result: AsyncResult[Any] | None, error: BaseException | None
    ) -> None:
        self.events.append(Event(self.who, "after_send", signature.name, (result, error)))

    async def before_run(self, ctx: Context) -> None:
        self.events.append(Event(self.who, "before_run", ctx.name, (ctx,)))

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        self.events.append(Event(self.who, "on_retry", ctx.name, (error, delay)))

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        self.events.append(Event(self.who, "after_run", ctx.name, (ctx, outcome)))

    def of(self, task: str, hook: str | None = None) -> list[Event]:
        return [e for e in self.events if e.task == task and hook in (None, e.hook)]

    def outcome(self, task: str) -> Outcome:
        (event,) = self.of(task, "after_run")
        out = event.args[1]
        assert isinstance(out, Outcome)
        return out


class Broken(Middleware):
    """Raises in every hook."""

    async def before_send(self, signature: Signature) -> None:
        raise RuntimeError("before_send is broken")

    async def after_send(
        self, signature: Signature, result: AsyncResult[Any] | None, error: BaseException | None
    ) -> None:
        raise RuntimeError("after_send is broken")

    async def before_run(self, ctx: Context) -> None:
        raise RuntimeError("before_run is broken")

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        raise RuntimeError("on_retry is broken")

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        raise RuntimeError("after_run is broken")


async def test_hooks_run_in_order_around_send_and_run(server: Server) -> None:
    events: list[Event] = []
    server.add_middleware(Recorder("a", events))
    server.add_middleware(Recorder("b", events))
    seen: list[Context] = []

    @server.task(name="echo")
    async def echo(ctx: Context, word: str) -> str:
        seen.append(ctx)
        return f"{word} {ctx.headers['x-a']} {ctx.headers['x-b']}"

    async with running_worker(server):
        r = await echo.send("hello")
        assert await r.get(timeout=10) == "hello sent sent"
        await eventually(_count(events, "after_run", 2))
    order = [(e.who, e.hook) for e in events]
    assert order == [
        ("a", "before_send"), ("b", "before_send"), ("b", "after_send"), ("a", "after_send"),
        ("a", "before_run"), ("b", "before_run"), ("b", "after_run"), ("a", "after_run"),
    ]  # fmt: skip
    assert events[0].args == (r.task_id,)
    result, error = events[2].args
    assert isinstance(result, AsyncResult)
    assert (result.task_id, result.queue, error) == (r.task_id, "vecna_tasks", None)
    (ctx,) = events[4].args
    assert ctx is seen[0]  # the task's own Context
    assert (ctx.task_id, ctx.name, ctx.queue, ctx.attempt) == (r.task_id, "echo", "vecna_tasks", 1)
    assert ctx.worker == "test-worker"
    assert ctx.headers == {"x-a": "sent", "x-b": "sent"}
    _, outcome = events[-1].args
    assert (outcome.status, outcome.value, outcome.error) == ("success", "hello sent sent", None)
    assert outcome.state == "SUCCESS"
    assert 0 <= outcome.duration < 5


async def test_every_outcome_reaches_after_run(config: Config) -> None:
    server = Server(tuned(config, shutdown_grace=0.3))
    rec = Recorder("r")
    server.add_middleware(rec)
    started = anyio.Event()

    @server.task(name="boom")
    async def boom() -> None:
        raise ValueError("bad input")

    @server.task(name="later")
    async def later(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise RetryTaskLater("not yet", delay=0.1)
        return "done"

    @server.task(name="slow", timeout=0.2)
    async def slow() -> None:
        await anyio.sleep(30)

    @server.task(name="forever")
    async def forever() -> None:
        started.set()
        await anyio.sleep(60)

    @server.task(name="stuck")
    async def stuck() -> None:
        await anyio.sleep(60)

    async with server, running_worker(server, 10):
        with pytest.raises(TaskFailed):
            await (await boom.send()).get(timeout=10)
        assert await (await later.send()).get(timeout=10) == "done"
        with pytest.raises(TaskFailed, match="TaskTimeout"):
            await (await slow.send()).get(timeout=10)
        r = await forever.send()
        await started.wait()
        assert await r.cancel()
        await eventually(_has(rec, "forever", "after_run"))
        await stuck.send()
        await eventually(_has(rec, "stuck", "before_run"))
    # the worker stopped with 'stuck' still running: it was handed back
    failed = rec.outcome("boom")
    assert (failed.status, failed.state) == ("failure", "FAILURE")
    assert isinstance(failed.error, ValueError)
    assert str(failed.error) == "bad input"

    retried, succeeded = (e.args[1] for e in rec.of("later", "after_run"))
    assert (retried.status, retried.state, retried.retry_in) == ("retry", "RETRY", 0.1)
    assert isinstance(retried.error, RetryTaskLater)
    assert succeeded.status == "success"
    (on_retry,) = rec.of("later", "on_retry")
    assert isinstance(on_retry.args[0], RetryTaskLater)
    assert on_retry.args[1] == 0.1
    assert [e.hook for e in rec.of("later")][-5:] == [
        "before_run", "on_retry", "after_run", "before_run", "after_run",
    ]  # fmt: skip

    timed_out = rec.outcome("slow")
    assert (timed_out.status, timed_out.state) == ("timeout", "FAILURE")
    assert type(timed_out.error).__name__ == "TaskTimeout"
    assert 0.2 <= timed_out.duration < 5

    canceled = rec.outcome("forever")
    assert (canceled.status, canceled.state, canceled.error) == ("canceled", "CANCELED", None)

    interrupted = rec.outcome("stuck")
    assert (interrupted.status, interrupted.state) == ("interrupted", None)


async def test_retry_count_retries_show_as_retry(server: Server) -> None:
    rec = Recorder("r")
    server.add_middleware(rec)

    @server.task(name="flaky", retry_count=1, retry_timeout=1)
    async def flaky(ctx: Context) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return ctx.attempt

    async with running_worker(server):
        assert await (await flaky.send()).get(timeout=10) == 2
        await eventually(_count(rec.events, "after_run", 2))
    first, second = (e.args[1] for e in rec.of("flaky", "after_run"))
    assert (first.status, first.retry_in) == ("retry", 1.0)
    assert isinstance(first.error, ConnectionError)
    assert (second.status, second.value) == ("success", 2)
    attempts = [e.args[0].attempt for e in rec.of("flaky", "before_run")]
    assert attempts == [1, 2]


async def test_a_raising_middleware_loses_nothing(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="vecna_async.middleware")
    rec = Recorder("after")
    server.add_middleware(Broken())
    server.add_middleware(rec)

    @server.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task(name="again")
    async def again(ctx: Context) -> str:
        if ctx.attempt == 1:
            raise RetryTaskLater("once more", delay=0.05)
        return "ok"

    async with running_worker(server):
        r = await add.send(1, 2)
        assert await r.get(timeout=10) == 3
        assert await (await again.send()).get(timeout=10) == "ok"
        await eventually(_count(rec.events, "after_run", 3))
    # the other middleware saw everything, and the headers it set still travelled
    assert [e.hook for e in rec.of("add")] == [
        "before_send", "after_send", "before_run", "after_run",
    ]  # fmt: skip
    assert rec.of("add", "before_run")[0].args[0].headers == {"x-after": "sent"}
    lines = [r for r in caplog.records if r.name == "vecna_async.middleware"]
    hooks = {r.getMessage() for r in lines}
    for hook in ("before_send", "after_send", "before_run", "on_retry", "after_run"):
        assert f"middleware Broken: {hook} raised; carrying on without it" in hooks
    assert all(r.levelname == "ERROR" and r.exc_info for r in lines)
    run_lines = [r for r in lines if "run raised" in r.getMessage()]
    assert {getattr(r, "task_name", None) for r in run_lines} == {"add", "again"}
    send_lines = [r for r in lines if "send raised" in r.getMessage()]
    assert r.task_id in {getattr(x, "task_id", None) for x in send_lines}
    assert {getattr(x, "queue", None) for x in send_lines} == {"vecna_tasks"}


async def test_send_hooks_see_every_task_of_a_workflow(server: Server) -> None:
    rec = Recorder("r")
    server.add_middleware(rec)

    @server.task(name="add")
    async def add(*n: int) -> int:
        return sum(n)

    async with running_worker(server):
        group = await server.send_group(Group(add.signature(1, 1), add.signature(2, 2)))
        chain = await server.send_chain(Chain(add.signature(1), add.signature(2)))
        chord = await server.send_chord(Chord(Group(add.signature(3)), add.signature(4)))
        assert [await g.get(timeout=10) for g in group] == [2, 4]
        assert await chain.get(timeout=10) == 3
        assert await chord.get(timeout=10) == 7
        await eventually(_count(rec.events, "after_run", 6))
    sent = [e.args[0] for e in rec.events if e.hook == "before_send"]
    expected = [r.task_id for r in (*group, *chain.results, *chord.group_results, chord.callback)]
    assert sent == expected
    done = [e.args[0].task_id for e in rec.events if e.hook == "after_send"]
    assert done == expected
    # the headers set on a chain's later link and a chord's callback travelled too
    for e in rec.of("add", "before_run"):
        assert e.args[0].headers == {"x-r": "sent"}


async def test_a_failed_send_reaches_after_send_with_its_error(server: Server) -> None:
    rec = Recorder("r")
    server.add_middleware(rec)
    sig = Signature("nobody_knows", args=[object()])  # msgspec cannot encode it
    with pytest.raises(TypeError, match="nobody_knows"):
        await server.send_task(sig)
    (event,) = rec.of("nobody_knows", "after_send")
    result, error = event.args
    assert result is None
    assert isinstance(error, TypeError)


async def test_a_hook_may_replace_the_headers(server: Server) -> None:
    class Replace(Middleware):
        async def before_send(self, signature: Signature) -> None:
            signature.headers = {**signature.headers, "tenant": "acme"}

    server.add_middleware(Replace())

    @server.task(name="tenant")
    async def tenant(ctx: Context) -> str:
        return str(ctx.headers["tenant"])

    async with running_worker(server):
        assert await (await tenant.send()).get(timeout=10) == "acme"


def _count(events: list[Event], hook: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sum(e.hook == hook for e in events) >= n

    return check


def _has(rec: Recorder, task: str, hook: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(rec.of(task, hook))

    return check
