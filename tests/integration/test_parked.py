"""Messages of a task no worker of the queue knows are parked: a worker says so once per task name
(with how to fix it), and the parked counts are readable (``Listing.parked_counts``)."""

from __future__ import annotations

import logging

import pytest

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Config, Server, Signature, State
from vecna_async.worker.parked import ParkedWatch

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"


def warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"task {name!r} are parked" in r.getMessage()
    ]


async def test_a_worker_warns_once_per_unknown_task_name(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # the worker looks one heartbeat interval after it starts: its first claim parks them before
    async with Server(tuned(config, lease_timeout=10.0, heartbeat_interval=2.0)) as server:
        await warns_once(server, caplog)


async def warns_once(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    @server.task(name="known")
    async def known() -> str:
        return "ok"

    caplog.set_level(logging.WARNING, logger="vecna_async.worker")
    ghosts = [await server.send_task(Signature("ghost")) for _ in range(2)]
    await server.send_task(Signature("phantom"))
    async with running_worker(server, 5):
        assert await (await known.send()).get(timeout=5) == "ok"

        async def warned() -> bool:
            return bool(warnings_about(caplog, "ghost") and warnings_about(caplog, "phantom"))

        await eventually(warned)
        listing = server.get_broker().listing
        assert await listing.parked_counts(QUEUE) == {"ghost": 2, "phantom": 1}
    (message,) = warnings_about(caplog, "ghost")
    assert "2 message(s) of task 'ghost' are parked in queue 'vecna_tasks'" in message
    assert "this one knows: known" in message
    assert "Register the task on a worker that consumes 'vecna_tasks'" in message
    assert "ignore_when_task_not_registered=True" in message
    state = await ghosts[0].get_state()
    assert state is not None
    assert state.state is State.PENDING


async def test_parked_counts_and_the_watch_warn_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    listing = server.get_broker().listing
    assert await listing.parked_counts(QUEUE) == {}
    await server.send_task(Signature("ghost"))
    # a claim by a worker that knows only "known" parks it
    await server.get_broker().claim(QUEUE, 10, ["known"])
    assert await listing.parked_counts(QUEUE) == {"ghost": 1}
    watch = ParkedWatch(listing, QUEUE, ["known"], "w1", first_check_after=60)
    caplog.set_level(logging.WARNING, logger="vecna_async.worker")
    await watch.check()
    await server.send_task(Signature("ghost"))
    await server.get_broker().claim(QUEUE, 10, ["known"])
    assert await listing.parked_counts(QUEUE) == {"ghost": 2}
    await watch.check()
    assert len(warnings_about(caplog, "ghost")) == 1
    # a worker that knows the task takes them: nothing parked any more
    assert len(await server.get_broker().claim(QUEUE, 10, ["ghost"])) == 2
    assert await listing.parked_counts(QUEUE) == {}
    # a worker knowing the name never warns about it
    knows = ParkedWatch(listing, QUEUE, ["ghost"], "w2", first_check_after=60)
    await server.send_task(Signature("ghost"))
    await server.get_broker().claim(QUEUE, 10, ["known"])
    await knows.check()
    assert knows.warned == set()
