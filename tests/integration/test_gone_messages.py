"""An outcome (or a lease renewal) for a message that no longer exists in Redis — Redis restarted
without persistence — is reported as such (``gone:<token>`` from the scripts), not as a lease that
expired and was redelivered; a message another delivery finished is still the latter."""

from __future__ import annotations

import asyncio
import logging

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from vecna_async import Config, Server, Signature, State
from vecna_async.backend.base import StateWrite
from vecna_async.broker.base import Claimed, Done, SettleBatch
from vecna_async.messages import TaskState, encode
from vecna_async.worker.flusher import Flusher
from vecna_async.worker.heartbeat import Heartbeat, InFlight

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"
GONE_TEXT = "the message no longer exists in Redis (was Redis restarted without persistence?"
REDELIVERED_TEXT = "the lease had expired and the message was delivered again"


def success(c: Claimed) -> Done:
    state = TaskState(task_id=c.id, state=State.SUCCESS, task_name="echo", results=[1])
    return Done(c.id, c.token, encode(state))


async def echo(value: int) -> int:
    return value


async def claimed_one(server: Server) -> Claimed:
    server.register_task("echo", echo)
    await server.send_task(Signature("echo", args=[1]))
    (c,) = await server.get_broker().claim(QUEUE, 1, ["echo"])
    return c


async def test_settle_and_renewal_report_a_message_redis_lost_as_gone(
    server: Server, rc: aioredis.Redis
) -> None:
    c = await claimed_one(server)
    broker = server.get_broker()
    await rc.flushdb()  # Redis restarted without persistence
    batch = SettleBatch(QUEUE, started=[(c.id, c.token)], done=[success(c)])
    assert await broker.settle(batch) == [f"gone:{c.token}", f"gone:{c.token}"]
    # a resent call (its reply was lost) answers the same
    assert await broker.settle(batch) == [f"gone:{c.token}", f"gone:{c.token}"]
    for other in (
        SettleBatch(QUEUE, retry=[(c.id, c.token, b"{}", b"{}", 0)]),
        SettleBatch(QUEUE, dead=[(c.id, c.token, "why", b"{}")]),
        SettleBatch(QUEUE, release=[(c.id, c.token)]),
    ):
        assert await broker.settle(other) == [f"gone:{c.token}"]
    assert await broker.extend_leases(QUEUE, [(c.id, c.token)]) == [f"gone:{c.token}"]


async def test_a_message_another_delivery_finished_is_still_reported_lost(server: Server) -> None:
    c = await claimed_one(server)
    broker = server.get_broker()
    assert await broker.settle(SettleBatch(QUEUE, done=[success(c)])) == []
    assert await broker.settle(SettleBatch(QUEUE, done=[success(c)])) == [c.token]
    assert await broker.extend_leases(QUEUE, [(c.id, c.token)]) == [c.token]


async def settle_and_log(server: Server, caplog: pytest.LogCaptureFixture, c: Claimed) -> str:
    freed: list[str] = []
    backend = server.get_backend() if server.config.result_backend else None
    flusher = Flusher(server.get_broker(), backend, freed.extend)
    caplog.set_level(logging.WARNING, logger="vecna_async.worker")
    flusher.done(c, success(c), "")
    await flusher.flush()
    assert freed == [c.token]  # its slot is free either way
    return caplog.text


async def test_the_flusher_says_the_message_is_gone(
    server: Server, rc: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    c = await claimed_one(server)
    await rc.flushdb()
    text = await settle_and_log(server, caplog, c)
    assert f"1 outcome(s) in queue 'vecna_tasks' were not applied: {GONE_TEXT}" in text
    assert "see README 'Delivery guarantees'" in text
    assert REDELIVERED_TEXT not in text


@pytest.mark.parametrize("finished_elsewhere", [False, True])
async def test_with_a_separate_backend_a_final_state_there_tells_the_two_apart(
    config: Config,
    redis_url: str,
    rc: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    finished_elsewhere: bool,
) -> None:
    backend_url = redis_url.rsplit("/", 1)[0] + "/1"
    async with Server(msgspec.structs.replace(config, result_backend=backend_url)) as server:
        c = await claimed_one(server)
        if finished_elsewhere:  # another delivery finished it: acked, its state on the backend
            assert await server.get_broker().settle(SettleBatch(QUEUE, done=[success(c)])) == []
            # (its worker's flusher then stores the state on the backend)
            await server.get_backend().store([StateWrite(QUEUE, c.id, success(c).state)])
        else:
            await rc.flushdb()  # only the broker's database: Redis lost the message
        text = await settle_and_log(server, caplog, c)
    if finished_elsewhere:
        assert REDELIVERED_TEXT in text
        assert GONE_TEXT not in text
    else:
        assert GONE_TEXT in text
        assert REDELIVERED_TEXT not in text


async def test_the_heartbeat_says_the_message_is_gone_and_stops_the_run(
    server: Server, rc: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    c = await claimed_one(server)
    in_flight = InFlight()
    run = asyncio.create_task(anyio.sleep(30))
    in_flight.add(c, run)
    await rc.flushdb()
    caplog.set_level(logging.WARNING, logger="vecna_async.worker")
    await Heartbeat(server.get_broker(), in_flight, 10.0).beat()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert f"lost the lease of 1 message(s) in 'vecna_tasks': {GONE_TEXT}" in caplog.text
    assert "stopped 1 run(s)" in caplog.text
    assert "delivered again" not in caplog.text
