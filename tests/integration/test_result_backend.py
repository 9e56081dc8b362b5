"""States on a separate result backend (``Config.result_backend``): a second private
redis-server holds them, the session's Redis is the broker.

Results awaited by a Server that did not send the task are pushed to it (the backend's watchers
set), at most ``MAX_WATCHERS`` of them per task (the rest re-read); RECEIVED is shown; a
duplicate send or a late STARTED or RETRY mark never undoes a final state. Synchronisation is by
events the tasks wait on and by polling Redis with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any, cast

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Config, ResultTimeout, Server, Signature, State
from vecna_async.backend import results
from vecna_async.backend.base import MAX_WATCHERS, StateWrite
from vecna_async.broker.base import Broker, Done, SettleBatch
from vecna_async.messages import TaskState, encode
from vecna_async.worker.flusher import Flusher

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"


@pytest.fixture(scope="module")
def backend_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def sep_config(config: Config, backend_proc: RedisProcess) -> Config:
    """The test's Config (broker: the session Redis) with states on the second redis-server."""
    return msgspec.structs.replace(config, result_backend=backend_proc.url)


@pytest.fixture
async def backend_rc(backend_proc: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(backend_proc.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class Gate:
    """A task ``gate`` that tells when it runs and finishes when released."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self) -> str:
        self.running.set()
        await self.release.wait()
        return "done"


async def servers(stack: AsyncExitStack, config: Config, n: int) -> list[Server]:
    """``n`` Servers on one config: separate processes as far as results go (own ids, own reply
    channels, own listeners)."""
    return [await stack.enter_async_context(Server(config)) for _ in range(n)]


def channel_of(server: Server) -> str:
    return server.get_backend().reply_channel


# -- pushed to other Servers ---------------------------------------------------------------------


async def test_result_is_pushed_to_a_server_that_did_not_send_it(
    sep_config: Config, backend_rc: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "RECHECK_SECONDS", 60.0)  # a re-read would come far too late
    gate = Gate()
    async with AsyncExitStack() as stack:
        sender, other = await servers(stack, sep_config, 2)
        sender.register_task("gate", gate.run)
        await stack.enter_async_context(running_worker(sender))
        sent = await sender.send_task(Signature("gate"))
        with anyio.fail_after(10):
            await gate.running.wait()
        watchers = sender.keys.queue(QUEUE).watchers(sent.task_id)
        got: list[tuple[Any, float]] = []

        async def wait_elsewhere() -> None:
            value = await other.result(sent.task_id).get(timeout=30)
            got.append((value, time.monotonic()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_elsewhere)

            async def registered() -> bool:
                return bool(await backend_rc.sismember(watchers, channel_of(other)))

            await eventually(registered)
            ttl = await backend_rc.ttl(watchers)
            assert 0 < ttl <= sep_config.results_expire_in
            released = time.monotonic()
            gate.release.set()
        ((value, arrived),) = got
        assert value == "done"
        assert arrived - released < 3.0  # pushed: the recheck period is 60 s
        assert await sent.get(timeout=5) == "done"
        assert not await backend_rc.exists(watchers)  # answered: forgotten


async def test_a_state_stored_before_the_watch_is_read_not_waited_for(
    sep_config: Config, backend_rc: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "RECHECK_SECONDS", 60.0)
    async with AsyncExitStack() as stack:
        sender, other = await servers(stack, sep_config, 2)
        sender.register_task("gate", Gate().run)
        sent = await sender.send_task(Signature("gate"))
        done = TaskState(task_id=sent.task_id, state=State.SUCCESS, results=["early"])
        await sender.get_backend().store([StateWrite(QUEUE, sent.task_id, encode(done))])
        with anyio.fail_after(5):
            assert await other.result(sent.task_id).get() == "early"
        # a final state registers no watcher
        assert not await backend_rc.exists(sender.keys.queue(QUEUE).watchers(sent.task_id))


@pytest.mark.parametrize("backend", ["separate", "shared"])
async def test_a_state_too_large_to_publish_is_read_at_once(
    config: Config, sep_config: Config, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """States over 64 KiB are published empty (a wake-up): the waiter reads the state then,
    also when the wake-up came before it waited (the sender's listener kept it)."""
    monkeypatch.setattr(results, "RECHECK_SECONDS", 60.0)
    cfg = sep_config if backend == "separate" else config
    big = "x" * 100_000

    async def large() -> str:
        return big

    async with AsyncExitStack() as stack:
        sender, other = await servers(stack, cfg, 2)
        sender.register_task("large", large)
        # a first wait subscribes the sender's listener: later sends are heard from the start
        with pytest.raises(ResultTimeout):
            await sender.result("no-such-task").get(timeout=0.1)
        await stack.enter_async_context(running_worker(sender))
        sent = await sender.send_task(Signature("large"))

        async def finished() -> bool:
            state = await sent.get_state()
            return state is not None and state.is_completed()

        await eventually(finished)
        with anyio.fail_after(5):
            assert await sent.get() == big
            assert await other.result(sent.task_id).get() == big


# -- the watchers cap --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["separate", "shared"])
async def test_watchers_are_capped_and_the_rest_re_read(
    config: Config,
    sep_config: Config,
    backend_rc: aioredis.Redis,
    rc: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    """20 Servers wait for one task: 16 are registered (pushed), the other 4 re-read."""
    monkeypatch.setattr(results, "RECHECK_SECONDS", 0.2)
    cfg = sep_config if backend == "separate" else config
    gate = Gate()
    async with AsyncExitStack() as stack:
        sender, *others = await servers(stack, cfg, 21)
        sender.register_task("gate", gate.run)
        sent = await sender.send_task(Signature("gate"))
        q = sender.keys.queue(QUEUE)
        for other in others:  # a waiter's first read registers it, one after the other here
            state = await other.get_backend().watch(QUEUE, sent.task_id)
            assert state is not None
            assert state.state is State.PENDING
        registered = [channel_of(o) for o in others[:MAX_WATCHERS]]
        if backend == "separate":
            members = await backend_rc.smembers(q.watchers(sent.task_id))
            assert members == set(registered)
        else:
            reply = await rc.hget(q.record(sent.task_id), "r")
            assert isinstance(reply, bytes)
            assert reply.decode().split(" ") == [channel_of(sender), *registered]

        await stack.enter_async_context(running_worker(sender))
        values: list[Any] = []

        async def wait(server: Server) -> None:
            values.append(await server.result(sent.task_id).get(timeout=20))

        with anyio.fail_after(25):
            async with anyio.create_task_group() as tg:
                for other in others:
                    tg.start_soon(wait, other)
                await gate.running.wait()
                gate.release.set()
        assert values == ["done"] * len(others)


# -- RECEIVED ------------------------------------------------------------------------------------


async def test_received_is_shown_while_claimed_and_not_started(sep_config: Config) -> None:
    async with Server(sep_config) as server:
        sent = await server.send_task(Signature("gate"))
        pending = await sent.get_state()
        assert pending is not None
        assert pending.state is State.PENDING
        (claimed,) = await server.get_broker().claim(QUEUE, 1, ["gate"])
        assert claimed.id == sent.task_id
        received = await sent.get_state()
        assert received is not None
        assert received.state is State.RECEIVED
        assert received.task_name == "gate"
        # another Server asking by id sees the same
        async with Server(sep_config) as other:
            seen = await other.result(sent.task_id).get_state()
            assert seen is not None
            assert seen.state is State.RECEIVED


# -- a final state stays final -------------------------------------------------------------------


async def test_a_duplicate_send_does_not_turn_success_back_into_pending(
    sep_config: Config,
) -> None:
    """Fails until ``RedisBroker._enqueue`` stores PENDING with ``if_absent=True``."""
    gate = Gate()
    gate.release.set()
    async with Server(sep_config) as server:
        server.register_task("gate", gate.run)
        sig = Signature("gate", id="dup-1")
        async with running_worker(server):
            assert await (await server.send_task(sig)).get(timeout=10) == "done"
        again = await server.send_task(Signature("gate", id="dup-1"))  # no worker runs it
        state = await again.get_state()
        assert state is not None
        assert state.state is State.SUCCESS, state


class StallAfterSettle:
    """A real broker, and a worker that stalls once between a settle and its state write
    (``then`` runs there): what a GC pause, a slow network or a busy loop can do."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.then: Any = None

    async def settle(self, batch: SettleBatch) -> list[str]:
        lost = await self._broker.settle(batch)
        then, self.then = self.then, None
        if then is not None:
            await then()
        return lost


@pytest.mark.parametrize("mark", ["started", "retry"])
async def test_a_late_mark_does_not_overwrite_a_final_state(
    config: Config, backend_proc: RedisProcess, mark: str
) -> None:
    """Worker 1 settles a STARTED (or RETRY) mark and stalls before writing it to the backend;
    meanwhile worker 2 gets the message (its lease expired, or the retry made it ready again)
    and finishes it; worker 1's write then lands on SUCCESS. Fails until the Flusher writes
    STARTED and RETRY marks with ``unless_final=True``."""
    cfg = msgspec.structs.replace(
        tuned(config, lease_timeout=0.5, heartbeat_interval=0.2), result_backend=backend_proc.url
    )
    async with Server(cfg) as server:
        broker, backend = server.get_broker(), server.get_backend()
        sent = await server.send_task(Signature("gate"))
        (first,) = await broker.claim(QUEUE, 1, ["gate"])

        async def second_copy_finishes() -> None:
            async def claimed_again() -> list[Any]:
                return await broker.claim(QUEUE, 1, ["gate"])

            (second,) = await eventually(claimed_again, timeout=10)
            assert second.token != first.token
            success = TaskState(task_id=sent.task_id, state=State.SUCCESS, results=["second"])
            worker2 = Flusher(broker, backend, lambda ids: None)
            worker2.done(second, Done(sent.task_id, second.token, encode(success)), "")
            await worker2.flush()

        stalling = StallAfterSettle(broker)
        stalling.then = second_copy_finishes
        worker1 = Flusher(cast(Broker, stalling), backend, lambda ids: None)
        if mark == "started":
            worker1.started(first, "gate")
        else:
            retry = TaskState(task_id=sent.task_id, state=State.RETRY, task_name="gate")
            worker1.retry(first, encode(retry), first.body, 0)
        await worker1.flush()

        state = await sent.get_state()
        assert state is not None
        assert state.state is State.SUCCESS, state
        assert await sent.get(timeout=5) == "second"
