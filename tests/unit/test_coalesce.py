"""The Coalescer: the first send goes out at once, the ones that arrive meanwhile go out together,
and a failure reaches every caller of the batch that failed."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from vecna_async.broker.coalesce import Coalescer
from vecna_async.tasks.wire import Outgoing

pytestmark = pytest.mark.anyio


def msg(i: int) -> Outgoing:
    return Outgoing("q", str(i), "t", b"{}", 0, 0, False, "")


async def test_an_idle_send_goes_out_alone_and_at_once() -> None:
    calls: list[list[str]] = []

    async def send(messages: Sequence[Outgoing]) -> None:
        calls.append([m.id for m in messages])

    c = Coalescer(send)
    await c.publish([msg(1)])
    await c.publish([msg(2)])
    assert calls == [["1"], ["2"]]


async def test_sends_arriving_during_one_in_flight_go_out_together() -> None:
    calls: list[list[str]] = []
    release = anyio.Event()

    async def send(messages: Sequence[Outgoing]) -> None:
        calls.append([m.id for m in messages])
        if len(calls) == 1:
            await release.wait()

    c = Coalescer(send)
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.publish, [msg(0)])
        await anyio.wait_all_tasks_blocked()
        for i in range(1, 6):
            tg.start_soon(c.publish, [msg(i)])
        await anyio.wait_all_tasks_blocked()
        assert calls == [["0"]]  # the others wait for the first call
        release.set()
    assert calls == [["0"], ["1", "2", "3", "4", "5"]]


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_send_works() -> None:
    release = anyio.Event()
    fail = True

    async def send(messages: Sequence[Outgoing]) -> None:
        if messages[0].id == "0":
            await release.wait()
        elif fail:
            raise ConnectionError("down")

    c = Coalescer(send)
    errors: list[str] = []

    async def publish(i: int) -> None:
        try:
            await c.publish([msg(i)])
        except ConnectionError as exc:
            errors.append(f"{i}: {exc}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish, 0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(publish, 1)
        tg.start_soon(publish, 2)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert sorted(errors) == ["1: down", "2: down"]
    fail = False
    await c.publish([msg(3)])  # the coalescer is not stuck busy
