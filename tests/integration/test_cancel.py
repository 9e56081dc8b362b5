"""``server.cancel_task`` / ``AsyncResult.cancel()``: cancel anything not finished. A queued or
delayed task never runs; a running one is stopped in its worker (pushed, within a second); its
state becomes CANCELED, and so do the states of what would have followed it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import anyio
import anyio.lowlevel
import pytest

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Chain, Config, Server, Signature, State, TaskCanceled
from vecna_async.broker.base import Done, SettleBatch
from vecna_async.messages import TaskState, encode

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]
QUEUE = "vecna_tasks"
PUSH_BOUND = 1.0
"""Seconds within which a running task must be stopped after cancel_task returned."""


async def test_a_queued_or_delayed_task_never_runs(server: Server) -> None:
    ran: list[int] = []

    async def note(i: int) -> None:
        ran.append(i)

    server.register_task("note", note)
    queued = await server.send_task(Signature("note", args=[1]))
    eta = datetime.now(UTC) + timedelta(seconds=1)
    delayed = await server.send_task(Signature("note", args=[2], eta=eta))
    assert await server.cancel_task(queued.task_id) is True
    assert await delayed.cancel() is True
    async with running_worker(server, 4):
        marker = await server.send_task(Signature("note", args=[3]))
        await marker.get(timeout=10)
        for r in (queued, delayed):
            with pytest.raises(TaskCanceled):
                await r.get(timeout=5)

        async def past_eta() -> bool:
            return datetime.now(UTC) > eta + timedelta(seconds=1)

        await eventually(past_eta, timeout=10)
    assert ran == [3]


async def test_a_running_task_blocked_in_await_is_stopped_at_once(server: Server) -> None:
    started, stopped = anyio.Event(), anyio.Event()

    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async def quick() -> int:
        return 7

    server.register_tasks({"forever": forever, "quick": quick})
    async with running_worker(server, 1):
        r = await server.send_task(Signature("forever"))
        with anyio.fail_after(10):
            await started.wait()
        assert await r.cancel() is True
        canceled_at = time.monotonic()
        with anyio.fail_after(PUSH_BOUND):
            await stopped.wait()
        assert time.monotonic() - canceled_at < PUSH_BOUND
        with pytest.raises(TaskCanceled):
            await r.get(timeout=5)
        # its one slot is free again
        assert await (await server.send_task(Signature("quick"))).get(timeout=10) == 7
    state = await r.get_state()
    assert state is not None
    assert state.state is State.CANCELED


async def test_a_cpu_loop_with_awaits_is_stopped(server: Server) -> None:
    started = anyio.Event()
    loops = 0

    async def crunch() -> int:
        nonlocal loops
        started.set()
        total = 0
        while True:
            total += sum(range(10_000))  # CPU work
            loops += 1
            await anyio.lowlevel.checkpoint()  # lets a cancel in

    server.register_task("crunch", crunch)
    async with running_worker(server, 2):
        r = await server.send_task(Signature("crunch"))
        with anyio.fail_after(10):
            await started.wait()
        assert await server.cancel_task(r.task_id) is True
        with pytest.raises(TaskCanceled):
            await r.get(timeout=5)
        seen = loops

        async def still() -> bool:  # the loop stopped: no progress over several checks
            return loops == seen

        await eventually(still, timeout=PUSH_BOUND)
        now = loops
        await anyio.sleep(0.2)  # the scenario: time for a loop that did not stop to go on
        assert loops == now


async def test_a_thread_task_is_abandoned_and_its_slot_freed(server: Server) -> None:
    running, release = threading.Event(), threading.Event()

    def blocking() -> str:
        running.set()
        release.wait(30)
        return "late"

    async def quick() -> int:
        return 1

    server.register_tasks({"blocking": blocking, "quick": quick})
    try:
        async with running_worker(server, 1):
            r = await server.send_task(Signature("blocking"))
            await eventually(lambda: _now(running.is_set()), timeout=10)
            assert await r.cancel() is True
            # the worker's one slot is free although the thread still runs
            assert await (await server.send_task(Signature("quick"))).get(timeout=10) == 1
            with pytest.raises(TaskCanceled):
                await r.get(timeout=5)
    finally:
        release.set()


async def _now(value: bool) -> bool:
    return value


async def test_a_finished_task_is_not_canceled(server: Server) -> None:
    async def quick() -> int:
        return 1

    server.register_task("quick", quick)
    async with running_worker(server, 2):
        r = await server.send_task(Signature("quick"))
        assert await r.get(timeout=10) == 1
        assert await r.cancel() is False
    state = await r.get_state()
    assert state is not None
    assert state.state is State.SUCCESS


async def test_canceling_a_running_chain_link_cancels_the_rest(server: Server) -> None:
    started = anyio.Event()
    ran: list[str] = []

    async def first() -> int:
        started.set()
        await anyio.sleep_forever()
        return 0

    async def then(*values: int) -> None:
        ran.append("then")

    server.register_tasks({"first": first, "then": then})
    chain = Chain(Signature("first"), Signature("then"), Signature("then"))
    async with running_worker(server, 2):
        ch = await server.send_chain(chain)
        with anyio.fail_after(10):
            await started.wait()
        assert await server.cancel_task(ch.results[0].task_id) is True
        with pytest.raises(TaskCanceled):
            await ch.get(timeout=5)  # the last link: it will never run, and says so
    assert ran == []


async def test_an_outcome_settled_after_the_cancel_is_dropped(server: Server) -> None:
    """The task finished just as it was canceled: the cancel wins (it said True), its result is
    dropped and nothing follows from it."""

    async def quick() -> int:
        return 1

    server.register_task("quick", quick)
    r = await server.send_task(Signature("quick"))
    broker = server.get_broker()
    (c,) = await broker.claim(QUEUE, 1, ["quick"])
    assert await r.cancel() is True
    success = encode(TaskState(task_id=c.id, state=State.SUCCESS, task_name="quick", results=[1]))
    assert await broker.settle(SettleBatch(QUEUE, done=[Done(c.id, c.token, success)])) == [
        f"canceled:{c.token}"
    ]
    with pytest.raises(TaskCanceled):
        await r.get(timeout=5)


async def test_cancel_delayed_task_leaves_a_running_task_alone(server: Server) -> None:
    started = anyio.Event()
    release = anyio.Event()

    async def gated() -> int:
        started.set()
        await release.wait()
        return 3

    server.register_task("gated", gated)
    async with running_worker(server, 2):
        sig = Signature("gated")
        r = await server.send_task(sig)
        with anyio.fail_after(10):
            await started.wait()
        assert await server.cancel_delayed_task(sig) is False
        release.set()
        assert await r.get(timeout=10) == 3


async def test_a_canceled_task_whose_worker_died_never_runs_again(config: Config) -> None:
    """Canceled while leased by a worker that then died: its lease is reaped, and the claim that
    finds it drops it instead of running it."""
    ran: list[int] = []

    async def note(i: int) -> None:
        ran.append(i)

    cfg = tuned(config, lease_timeout=0.3, heartbeat_interval=0.1)
    async with Server(cfg) as srv:
        srv.register_task("note", note)
        r = await srv.send_task(Signature("note", args=[1]))
        broker = srv.get_broker()
        await broker.claim(QUEUE, 1, ["note"])  # a worker that then died
        assert await r.cancel() is True
        async with running_worker(srv, 2):
            marker = await srv.send_task(Signature("note", args=[2]))
            await marker.get(timeout=10)

            async def reaped() -> bool:
                await broker.claim(QUEUE, 0, [])
                record = srv.keys.queue(QUEUE).record(r.task_id)
                return bool(await srv.get_backend().client.exists(record) == 0)

            await eventually(reaped, timeout=10)
    assert ran == [2]
