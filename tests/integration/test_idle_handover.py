"""Idle hand-over: a worker whose claim ran dry registers its free slots, and the next messages
are leased straight into its inbox (one round trip from enqueue to a running task). These tests
drive the broker API to watch each step, and real workers for the end-to-end cases."""

from __future__ import annotations

import uuid

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker
from vecna_async import Config, Server, Signature, State
from vecna_async.connection import text

pytestmark = pytest.mark.anyio
QUEUE = "vecna_tasks"


async def echo(value: int) -> int:
    return value


async def test_a_dry_claim_registers_and_the_next_message_is_handed_over(
    server: Server, rc: aioredis.Redis
) -> None:
    server.register_task("echo", echo)
    broker = server.get_broker()
    q = server.keys.queue(QUEUE)
    session = uuid.uuid4().hex[:16]
    assert await broker.claim(QUEUE, 3, ["echo"], session) == []
    assert text(await rc.hget(q.idle, session) or b"").startswith("3 ")

    r = await server.send_task(Signature("echo", args=[7]))
    assert await rc.zcard(q.ready) == 0  # not queued: leased and handed over
    (handed,) = await broker.wait_for_work(QUEUE, 1.0, session)
    assert handed.id == r.task_id
    assert handed.token == f"{session}/1"
    assert await rc.hget(q.record(r.task_id), "o") == handed.token.encode()
    assert await rc.zscore(q.leases, r.task_id) is not None
    state = await r.get_state()
    assert state is not None
    assert state.state is State.RECEIVED
    assert text(await rc.hget(q.idle, session) or b"").startswith("2 ")  # one slot used


async def test_leaving_hands_the_inbox_back_unrun(server: Server, rc: aioredis.Redis) -> None:
    server.register_task("echo", echo)
    broker = server.get_broker()
    q = server.keys.queue(QUEUE)
    session = uuid.uuid4().hex[:16]
    await broker.claim(QUEUE, 2, ["echo"], session)
    results = [await server.send_task(Signature("echo", args=[i])) for i in range(2)]
    assert await rc.llen(q.inbox_prefix + session) == 2

    assert await broker.leave(QUEUE, session) == 2
    assert await rc.exists(q.inbox_prefix + session, q.idle) == 0
    assert await rc.zcard(q.leases) == 0
    ready = [text(m) for m in await rc.zrange(q.ready, 0, -1)]
    assert sorted(ready) == sorted(r.task_id for r in results)
    for r in results:  # a hand-back is not a delivery
        assert await rc.hget(q.record(r.task_id), "d") == b"0"


async def test_a_claim_takes_back_what_its_inbox_holds(server: Server, rc: aioredis.Redis) -> None:
    """Woken by a wake-up token while a message was being handed over: the next claim returns
    the handed one (with its own lease token) and counts it against the slots it asked for."""
    server.register_task("echo", echo)
    broker = server.get_broker()
    q = server.keys.queue(QUEUE)
    session = uuid.uuid4().hex[:16]
    await broker.claim(QUEUE, 1, ["echo"], session)
    handed = await server.send_task(Signature("echo", args=[1]))
    queued = await server.send_task(Signature("echo", args=[2]))  # registration used up: ready
    assert await rc.zcard(q.ready) == 1

    got = await broker.claim(QUEUE, 2, ["echo"], session)
    assert [(c.id, c.token) for c in got] == [
        (handed.task_id, f"{session}/1"),
        (queued.task_id, got[1].token),
    ]
    assert got[1].token != got[0].token
    assert await rc.exists(q.inbox_prefix + session) == 0


async def test_a_stale_registration_is_skipped(config: Config, rc: aioredis.Redis) -> None:
    """A worker that died while registered stops getting messages once its registration expires
    (it refreshes it at every claim, at least once per poll period)."""
    short = msgspec.structs.replace(
        config,
        redis=msgspec.structs.replace(config.redis, normal_tasks_poll_period=50, read_timeout=0.05),
    )
    async with Server(short) as srv:
        srv.register_task("echo", echo)
        q = srv.keys.queue(QUEUE)
        session = uuid.uuid4().hex[:16]
        await srv.get_broker().claim(QUEUE, 5, ["echo"], session)
        ttl_ms = 2 * 50 + 50

        async def expired() -> bool:
            seconds, micros = await rc.time()
            now = seconds * 1000 + micros // 1000
            value = await rc.hget(q.idle, session)
            return value is None or int(value.split()[2]) < now

        await eventually(expired, timeout=ttl_ms / 1000 + 2)
        r = await srv.send_task(Signature("echo", args=[3]))
        assert await rc.zrange(q.ready, 0, -1) == [r.task_id.encode()]
        assert await rc.exists(q.inbox_prefix + session, q.idle) == 0


async def test_a_message_handed_to_a_worker_that_does_not_know_it_is_parked(
    config: Config, server: Server, rc: aioredis.Redis
) -> None:
    async def other(value: int) -> int:
        return value + 1

    server.register_task("echo", echo)
    async with Server(config) as knows_other:
        knows_other.register_task("other", other)
        async with running_worker(server, 5):
            q = server.keys.queue(QUEUE)

            async def registered() -> bool:
                return bool(await rc.hlen(q.idle))

            await eventually(registered)
            r = await server.send_task(Signature("other", args=[1]))

            async def parked() -> bool:
                return bool(await rc.zcard(q.parked_prefix + "other"))

            await eventually(parked)
            state = await r.get_state()
            assert state is not None
            assert state.state is not State.FAILURE
            async with running_worker(knows_other, 5):
                assert await r.get(timeout=10) == 2


async def test_an_idle_worker_is_handed_no_more_than_its_free_slots(
    server: Server, redis_url: str
) -> None:
    release = anyio.Event()

    async def hold(i: int) -> int:
        await release.wait()
        return i

    server.register_task("hold", hold)
    q = server.keys.queue(QUEUE)
    sampler = aioredis.Redis.from_url(redis_url)
    try:
        async with running_worker(server, 2):

            async def registered() -> bool:
                return bool(await sampler.hlen(q.idle))

            await eventually(registered)
            results = await server.send_tasks(Signature("hold", args=[i]) for i in range(10))

            async def two_held() -> bool:
                return await sampler.zcard(q.leases) == 2

            await eventually(two_held)
            assert await sampler.zcard(q.ready) == 8
            release.set()
            assert [await r.get(timeout=10) for r in results] == list(range(10))
    finally:
        await sampler.aclose()
