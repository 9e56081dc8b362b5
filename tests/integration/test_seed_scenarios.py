"""The seed README's scenarios, through the public API, with an in-process worker and a private
redis-server: typed and plain arguments, results, callbacks, retries, errors, expiry, pending
listings, unknown tasks and concurrency limits."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import pytest

from tests.apps import seed_tasks
from tests.apps.seed_tasks import register_seed_tasks
from tests.support.backends import plain_client
from tests.support.vecna import eventually, running_worker
from vecna_async import (
    Arg,
    AsyncResult,
    Config,
    MessageTooLarge,
    ResultTimeout,
    Server,
    Signature,
    State,
    TaskFailed,
    TaskState,
    Worker,
)

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]


@pytest.fixture
def app(server: Server) -> Server:
    """The test's Server with every seed task registered and the recordings cleared."""
    seed_tasks.reset()
    register_seed_tasks(server)
    return server


@asynccontextmanager
async def launched(worker: Worker) -> AsyncIterator[Worker]:
    """Run an already configured worker for the block (``running_worker`` builds its own)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.launch)
        try:
            yield worker
        finally:
            worker.quit()


async def run(server: Server, sig: Signature, timeout: float = 5.0) -> Any:
    """Send ``sig`` and wait for its value (a worker must be running)."""
    r = await server.send_task(sig)
    return await r.get(timeout=timeout)


async def state_is(r: AsyncResult[Any], state: State) -> TaskState | None:
    s = await r.get_state()
    return s if s is not None and s.state is state else None


def waiter(r: AsyncResult[Any], state: State) -> Callable[[], Awaitable[TaskState | None]]:
    return lambda: state_is(r, state)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- sending and results -------------------------------------------------------------------------
async def test_add_with_typed_args(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("add", args=[Arg("int64", 1), Arg("int64", 1)]))
        assert await r.get(timeout=5) == 2
        state = await r.get_state()
    assert state is not None
    assert state.state is State.SUCCESS
    assert state.results == [2]
    assert state.task_name == "add"


async def test_add_with_plain_values(app: Server) -> None:
    async with running_worker(app):
        assert await run(app, Signature("add", args=[1, 1])) == 2


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (Arg("bool", True), True),
        (Arg("int", -5), -5),
        (Arg("int8", -128), -128),
        (Arg("int16", 32767), 32767),
        (Arg("int32", -(2**31)), -(2**31)),
        (Arg("int64", 2**63 - 1), 2**63 - 1),
        (Arg("uint", 7), 7),
        (Arg("uint8", 255), 255),
        (Arg("uint16", 65535), 65535),
        (Arg("uint32", 2**32 - 1), 2**32 - 1),
        (Arg("uint64", 2**64 - 1), 2**64 - 1),
        (Arg("float32", 1.5), 1.5),
        (Arg("float64", 2.25), 2.25),
        (Arg("string", "héllo"), "héllo"),
        (Arg("[]bool", [True, False]), [True, False]),
        (Arg("[]int", [1, -1]), [1, -1]),
        (Arg("[]int8", [-128, 127]), [-128, 127]),
        (Arg("[]int16", [1]), [1]),
        (Arg("[]int32", [2]), [2]),
        (Arg("[]int64", [2**63 - 1, -(2**63)]), [2**63 - 1, -(2**63)]),
        (Arg("[]uint", [3]), [3]),
        (Arg("[]uint8", [0, 255]), [0, 255]),
        (Arg("[]uint16", [4]), [4]),
        (Arg("[]uint32", [5]), [5]),
        (Arg("[]uint64", [2**64 - 1]), [2**64 - 1]),
        (Arg("[]float32", [0.5, -0.5]), [0.5, -0.5]),
        (Arg("[]float64", [1.25, 2]), [1.25, 2.0]),
        (Arg("[]string", ["a", "b"]), ["a", "b"]),
        (Arg("[]string", []), []),
    ],
    ids=lambda v: v.type if isinstance(v, Arg) else "",
)
async def test_every_seed_arg_type_reaches_the_task(app: Server, arg: Arg, expected: Any) -> None:
    async with running_worker(app):
        value = await run(app, Signature("echo", args=[arg]))
    assert value == [expected]
    assert type(value[0]) is type(expected)


async def test_seed_slice_tasks(app: Server) -> None:
    async with running_worker(app):
        assert await run(app, Signature("sum_ints", args=[Arg("[]int64", [1, 2, 3])])) == 6
        assert await run(app, Signature("sum_floats", args=[Arg("[]float64", [1.5, 2.5])])) == 4.0
        assert await run(app, Signature("concat", args=[Arg("[]string", ["foo", "bar"])])) == (
            "foobar"
        )
        assert await run(app, Signature("split", args=[Arg("string", "foo bar baz")])) == [
            "foo",
            "bar",
            "baz",
        ]
        assert await run(app, Signature("sum_ints", args=[[4, 5]])) == 9


async def test_multiple_return_values_come_back_as_a_tuple(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(
            Signature("multiple_returns", args=[Arg("int64", 1), Arg("string", "a")])
        )
        assert await r.get(timeout=5) == (1, "a")
        state = await r.get_state()
    assert state is not None
    assert state.results == [1, "a"]


async def test_failing_task_raises_task_failed_and_stores_failure(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("panic_task"))
        with pytest.raises(TaskFailed) as info:
            await r.get(timeout=5)
        state = await r.get_state()
    assert info.value.error == "RuntimeError: oops"
    assert info.value.task_id == r.task_id
    assert state is not None
    assert state.state is State.FAILURE
    assert state.error == "RuntimeError: oops"
    assert "Traceback" in state.traceback
    assert "panic_task" in state.traceback
    assert "RuntimeError: oops" in state.traceback


async def test_get_state_of_unknown_id_is_none(app: Server) -> None:
    assert await app.result("no-such-task-id").get_state() is None


# -- callbacks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ten", [10, Arg("int64", 10)], ids=["plain", "typed"])
async def test_on_success_gets_parent_result_prepended(app: Server, ten: Any) -> None:
    callback = Signature("multiply", args=[ten])
    async with running_worker(app):
        await run(app, Signature("add", args=[1, 1], on_success=[callback]))
        assert callback.id is not None
        assert await app.result(callback.id).get(timeout=5) == 20


async def test_on_success_prepends_every_returned_value(app: Server) -> None:
    callback = Signature("record", args=["tail"])
    async with running_worker(app):
        await run(app, Signature("multiple_returns", args=[3, "x"], on_success=[callback]))
        assert callback.id is not None
        await app.result(callback.id).get(timeout=5)
    assert seed_tasks.STATE.calls == [(3, "x", "tail")]


@pytest.mark.parametrize("which", ["parent", "callback"])
async def test_immutable_callback_gets_no_result(app: Server, which: str) -> None:
    callback = Signature("record", args=["only"], immutable=which == "callback")
    parent = Signature("add", args=[1, 1], on_success=[callback], immutable=which == "parent")
    async with running_worker(app):
        assert await run(app, parent) == 2
        assert callback.id is not None
        await app.result(callback.id).get(timeout=5)
    assert seed_tasks.STATE.calls == [("only",)]


async def test_on_error_gets_error_string_first(app: Server) -> None:
    callback = Signature("record", args=["checkout"])
    async with running_worker(app):
        r = await app.send_task(Signature("panic_task", on_error=[callback]))
        with pytest.raises(TaskFailed):
            await r.get(timeout=5)
        assert callback.id is not None
        await app.result(callback.id).get(timeout=5)
    assert seed_tasks.STATE.calls == [("RuntimeError: oops", "checkout")]


async def test_on_success_callbacks_do_not_run_on_failure(app: Server) -> None:
    ok = Signature("record", args=["success"])
    err = Signature("record", args=["error"])
    async with running_worker(app):
        r = await app.send_task(Signature("panic_task", on_success=[ok], on_error=[err]))
        with pytest.raises(TaskFailed):
            await r.get(timeout=5)
        assert err.id is not None
        await app.result(err.id).get(timeout=5)
    assert ok.id is not None
    assert await app.result(ok.id).get_state() is None
    assert seed_tasks.STATE.calls == [("RuntimeError: oops", "error")]


# -- the worker's error handler -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_error_handler_called_once_after_retries_exhausted(app: Server, kind: str) -> None:
    seen: list[tuple[Signature, BaseException]] = []

    def sync_handler(sig: Signature, exc: BaseException) -> None:
        seen.append((sig, exc))

    async def async_handler(sig: Signature, exc: BaseException) -> None:
        await anyio.sleep(0.01)
        seen.append((sig, exc))

    worker = app.new_worker("handler-worker", 10)
    worker.set_error_handler(sync_handler if kind == "sync" else async_handler)
    async with launched(worker):
        r = await app.send_task(Signature("flaky", args=["h", 100], retry_count=1))
        await eventually(waiter(r, State.RETRY), timeout=5)
        assert seen == []  # not called for a failure that will be retried
        with pytest.raises(TaskFailed):
            await r.get(timeout=5)
        await eventually(lambda: _truthy(seen))
    assert len(seen) == 1
    sig, exc = seen[0]
    assert isinstance(sig, Signature)
    assert sig.name == "flaky"
    assert sig.id == r.task_id
    assert sig.args == ["h", 100]
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "flaky failure 2"
    assert len(seed_tasks.STATE.times["h"]) == 2


async def _truthy(value: Any) -> bool:
    return bool(value)


# -- retries -------------------------------------------------------------------------------------
async def test_retries_with_fibonacci_backoff(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("flaky", args=["fib", 2], retry_count=3))
        retry_state = await eventually(waiter(r, State.RETRY), timeout=5)
        assert retry_state is not None
        assert retry_state.error == "RuntimeError: flaky failure 1"
        assert await r.get(timeout=10) == 3
    times = seed_tasks.STATE.times["fib"]
    assert len(times) == 3
    first, second = gaps(times)
    assert 0.9 <= first <= 1.8, first
    assert 1.9 <= second <= 3.0, second


async def test_retry_timeout_fixes_the_delay(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(
            Signature("flaky", args=["fixed", 2], retry_count=2, retry_timeout=1)
        )
        await eventually(waiter(r, State.RETRY), timeout=5)
        assert await r.get(timeout=10) == 3
    for gap in gaps(seed_tasks.STATE.times["fixed"]):
        assert 0.9 <= gap <= 1.8, gap


async def test_retries_exhausted_fail_after_retry_count_plus_one_runs(app: Server) -> None:
    on_error = Signature("record", args=["after-retries"])
    async with running_worker(app):
        r = await app.send_task(
            Signature(
                "flaky", args=["gone", 100], retry_count=2, retry_timeout=1, on_error=[on_error]
            )
        )
        with pytest.raises(TaskFailed) as info:
            await r.get(timeout=10)
        state = await r.get_state()
        assert on_error.id is not None
        await app.result(on_error.id).get(timeout=5)
    assert seed_tasks.STATE.calls == [("RuntimeError: flaky failure 3", "after-retries")]
    assert info.value.error == "RuntimeError: flaky failure 3"
    assert state is not None
    assert state.state is State.FAILURE
    assert len(seed_tasks.STATE.times["gone"]) == 3


async def test_retry_task_later_reruns_without_using_retry_count(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("retry_later", args=["later", 2], retry_count=0))
        assert await r.get(timeout=5) == 3
    times = seed_tasks.STATE.times["later"]
    assert len(times) == 3
    for gap in gaps(times):
        assert 0.2 <= gap < 1.0, gap


async def test_retry_task_later_state_is_retry(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("retry_later", args=["st", 1]))
        retry_state = await eventually(waiter(r, State.RETRY), timeout=5)
        assert await r.get(timeout=5) == 2
    assert retry_state is not None
    assert "not yet" in retry_state.error


# -- results expiry ------------------------------------------------------------------------------
async def test_results_expire(config: Config, redis_url: str) -> None:
    short = msgspec.structs.replace(config, results_expire_in=1)
    seed_tasks.reset()
    client = plain_client(redis_url)
    try:
        async with Server(short) as srv:
            register_seed_tasks(srv)
            async with running_worker(srv):
                r = await srv.send_task(Signature("add", args=[2, 3]))
                assert await r.get(timeout=5) == 5
                state = await r.get_state()
                ttl_ms = await client.pttl(srv.keys.queue(r.queue).state(r.task_id))
            assert state is not None
            assert state.state is State.SUCCESS
            assert 0 < ttl_ms <= 1000
            await eventually(lambda: _is_none(r.get_state()), timeout=3)
    finally:
        await client.aclose()


async def _is_none(value: Awaitable[object]) -> bool:
    return await value is None


# -- pending tasks -------------------------------------------------------------------------------
async def test_pending_tasks_listed_in_send_order(app: Server) -> None:
    queue = app.config.default_queue
    sigs = [
        Signature("add", args=[Arg("int64", 1), Arg("int64", 2)]),
        Signature("concat", args=[Arg("[]string", ["a", "b"])]),
        Signature("add", args=[3, 4], kwargs={}, headers={"h": "v"}),
    ]
    for sig in sigs:
        await app.send_task(sig)
    pending = await app.get_broker().get_pending_tasks(queue)
    assert [p.id for p in pending] == [s.id for s in sigs]
    assert all(isinstance(p, Signature) for p in pending)
    assert pending[0].args == [Arg("int64", 1), Arg("int64", 2)]
    assert pending[1].args == [Arg("[]string", ["a", "b"])]
    assert pending[2].args == [3, 4]
    assert pending[2].headers == {"h": "v"}
    assert [p.name for p in pending] == ["add", "concat", "add"]


async def test_pending_tasks_ordered_by_priority(app: Server) -> None:
    low = Signature("add", args=[1], priority=0)
    high = Signature("add", args=[2], priority=5)
    mid = Signature("add", args=[3], priority=2)
    low2 = Signature("add", args=[4], priority=0)
    for sig in (low, high, mid, low2):
        await app.send_task(sig)
    pending = await app.get_broker().get_pending_tasks(app.config.default_queue)
    assert [p.id for p in pending] == [high.id, mid.id, low.id, low2.id]
    assert [p.priority for p in pending] == [5, 2, 0, 0]


# -- unknown tasks -------------------------------------------------------------------------------
async def test_unknown_task_is_left_for_a_worker_that_knows_it(config: Config) -> None:
    seed_tasks.reset()
    async with Server(config) as knows_add, Server(config) as knows_mystery:
        knows_add.register_task("add", seed_tasks.add)

        async def mystery(x: int) -> int:
            return x * 7

        knows_mystery.register_task("mystery", mystery)
        queue = config.default_queue
        async with launched(knows_add.new_worker("only-add", 10)):
            unknown = await knows_add.send_task(Signature("mystery", args=[6]))
            # the worker keeps running the tasks it knows, before and after meeting "mystery"
            assert await run(knows_add, Signature("add", args=[1, 2])) == 3
            assert await run(knows_add, Signature("add", args=[3, 4])) == 7
            pending = await knows_add.get_broker().get_pending_tasks(queue)
            assert [p.id for p in pending] == [unknown.task_id]
            assert pending[0].name == "mystery"
            assert pending[0].args == [6]
            state = await unknown.get_state()
            assert state is not None
            assert state.state is State.PENDING
            async with launched(knows_mystery.new_worker("knows-mystery", 10)):
                assert await unknown.get(timeout=5) == 42
        assert await knows_add.get_broker().get_pending_tasks(queue) == []


async def test_unknown_task_fails_when_asked_to(app: Server) -> None:
    async with running_worker(app):
        r = await app.send_task(Signature("mystery", ignore_when_task_not_registered=True))
        with pytest.raises(TaskFailed) as info:
            await r.get(timeout=5)
    assert "mystery" in info.value.error
    assert "not registered" in info.value.error
    state = await r.get_state()
    assert state is not None
    assert state.state is State.FAILURE


# -- argument checks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sig", "name", "index", "expected"),
    [
        (Signature("add", args=[Arg("int64", 1), Arg("int64", 2**63)]), "add", 1, "int64"),
        (Signature("add", args=[Arg("int64", 1), Arg("int64", "x")]), "add", 1, "int64"),
        (Signature("add", args=[Arg("int", 1), Arg("int", True)]), "add", 1, "int"),
        (Signature("echo", args=[1, Arg("float64", "1.5")]), "echo", 1, "float64"),
        (Signature("echo", args=[1, Arg("float64", 2**1100)]), "echo", 1, "float64"),
        (Signature("labeled", args=["a", "x"]), "labeled", 1, "int"),
        (Signature("labeled", args=[1, 2]), "labeled", 0, "str"),
    ],
    ids=[
        "int64-overflow",
        "int64-string",
        "int-bool",
        "float64-string",
        "float64-huge-int",
        "plain-str",
        "plain-int",
    ],
)
async def test_bad_argument_types_fail_clearly(
    app: Server, config: Config, sig: Signature, name: str, index: int, expected: str
) -> None:
    # sent by a Server that does not know the functions: the worker checks (a Server that knows
    # them refuses a plain value of the wrong kind at send: tests/integration/test_argument_types)
    async with running_worker(app, concurrency=1), Server(config) as producer:
        r = await producer.send_task(sig)
        with pytest.raises(TaskFailed) as info:
            await r.get(timeout=5)
        # the same worker carries on
        assert await run(app, Signature("add", args=[Arg("int64", 20), Arg("int64", 22)])) == 42
    error = info.value.error
    assert error.startswith("ArgumentTypeError: ")
    assert f"task {name!r}" in error
    assert f"argument {index}" in error
    assert f"expected {expected}" in error
    state = await r.get_state()
    assert state is not None
    assert state.state is State.FAILURE


async def test_bad_argument_is_not_retried(app: Server, config: Config) -> None:
    async with running_worker(app), Server(config) as producer:
        r = await producer.send_task(Signature("labeled", args=["a", "x"], retry_count=3))
        with pytest.raises(TaskFailed):
            await r.get(timeout=3)


# -- sync tasks and typed handles ------------------------------------------------------------------
async def test_sync_task_runs_in_a_thread(app: Server) -> None:
    async with running_worker(app):
        assert await run(app, Signature("sync_add", args=[2, 3])) == 5
    assert len(seed_tasks.STATE.thread_ids) == 1
    assert seed_tasks.STATE.thread_ids[0] != threading.get_ident()


async def test_typed_handle_converts_to_the_return_annotation(app: Server) -> None:
    @app.task(name="at_epoch")
    async def at_epoch(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    @app.task(name="mul")
    async def mul(a: int, b: int) -> int:
        return a * b

    async with running_worker(app):
        when = await (await at_epoch.send(1_700_000_000.5)).get(timeout=5)
        product = await (await mul.send(6, 7)).get(timeout=5)
    assert isinstance(when, datetime)
    assert when == datetime.fromtimestamp(1_700_000_000.5, UTC)
    assert product == 42


# -- limits and timeouts ---------------------------------------------------------------------------
async def test_message_too_large_sends_nothing(config: Config) -> None:
    small = msgspec.structs.replace(
        config, redis=msgspec.structs.replace(config.redis, max_message_bytes=1000)
    )
    async with Server(small) as srv:
        sig = Signature("concat", args=[["x" * 2000]])
        with pytest.raises(MessageTooLarge) as info:
            await srv.send_task(sig)
        assert info.value.task_name == "concat"
        assert info.value.limit == 1000
        assert await srv.get_broker().get_pending_tasks(config.default_queue) == []
        assert sig.id is None or await srv.result(sig.id).get_state() is None
        # a small one still goes through
        await srv.send_task(Signature("concat", args=[["x"]]))
        assert len(await srv.get_broker().get_pending_tasks(config.default_queue)) == 1


async def test_result_timeout_without_worker(app: Server) -> None:
    r = await app.send_task(Signature("add", args=[1, 1]))
    start = time.monotonic()
    with pytest.raises(ResultTimeout) as info:
        await r.get(timeout=0.5)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert 0.5 <= elapsed < 1.5
    assert info.value.state == "PENDING"


# -- concurrency ---------------------------------------------------------------------------------
async def test_concurrency_one_serializes(app: Server) -> None:
    async with running_worker(app, concurrency=1):
        results = [await app.send_task(Signature("track", args=[0.05])) for _ in range(4)]
        for r in results:
            await r.get(timeout=5)
    assert seed_tasks.STATE.max_running == 1


@pytest.mark.parametrize("n", [2, 4])
async def test_concurrency_n_runs_n_at_once(app: Server, n: int) -> None:
    async with running_worker(app, concurrency=n):
        results = await app.send_tasks([Signature("rendezvous", args=[n]) for _ in range(n)])
        values = [await r.get(timeout=10) for r in results]
    assert values == [n] * n
    assert seed_tasks.STATE.max_running == n


async def test_concurrency_n_never_exceeds_n(app: Server) -> None:
    async with running_worker(app, concurrency=3):
        results = await app.send_tasks([Signature("track", args=[0.05]) for _ in range(9)])
        for r in results:
            await r.get(timeout=5)
    assert seed_tasks.STATE.max_running == 3
