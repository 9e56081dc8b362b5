"""Delivery promises under faults a long-running deployment meets: a worker stalled past its
lease, a worker killed while idle, Redis answering with errors, Redis stopped longer than a
lease, members of a chord finishing far apart, cancels racing long predecessors, dead letters
piling up, a stop with every slot busy.

Each test reproduces a failure seen in the previous release (it failed there) and checks the
promise against a real Redis and, where a process must stall or die, a real worker process.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually, running_worker, tuned
from tests.support.workers import counts, marker, wait_exit, worker_process
from vecna_async import (
    BrokerRefused,
    Chain,
    Chord,
    Config,
    Group,
    RedisConfig,
    Server,
    Signature,
    State,
    TaskCanceled,
)
from vecna_async.broker.base import Claimed, Done, SettleBatch
from vecna_async.messages import TaskState, encode
from vecna_async.worker.heartbeat import InFlight
from vecna_async.worker.taskset import TaskSet

QUEUE = "vecna_tasks"
pytestmark = pytest.mark.anyio


async def _max_running(rc: aioredis.Redis, config: Config) -> int:
    return int(await rc.get(marker(config, "max_running")) or 0)


# -- a worker stalled past its lease gets its own task again ------------------------------------


async def test_a_stalled_worker_that_gets_its_own_task_again_keeps_every_slot(
    config: Config, rc: aioredis.Redis, tmp_path: Path
) -> None:
    """Seen: after a stall longer than the lease, the worker's own claim took back the ids it
    was still running; in-flight bookkeeping keyed by id let the second delivery overwrite the
    first, a slot was never freed, and a worker of concurrency 3 ran fewer at once for good."""
    cfg = tuned(config, lease_timeout=1.0, heartbeat_interval=0.3)
    started = marker(cfg, "started")
    async with Server(cfg) as srv:
        broker = srv.get_broker()
        q = srv.keys.queue(QUEUE)
        long = [await srv.send_task(Signature("slow", args=[i, 2.0])) for i in (1, 2)]
        async with worker_process(cfg, tmp_path / "stalled.log", 3) as proc:

            async def both_started() -> bool:
                return len(await counts(rc, started)) == 2

            await eventually(both_started, timeout=10)
            proc.send_signal(signal.SIGSTOP)  # the event loop stops: no heartbeat, no settle
            try:
                # Time passes for the queue while the worker is stopped: another client's
                # claims (of nothing) move the lease clock on and reap the stalled leases.
                async def reaped() -> bool:
                    await broker.claim(QUEUE, 0, [])
                    return bool(await rc.zcard(q.leases) == 0)

                await eventually(reaped, timeout=10)
            finally:
                proc.send_signal(signal.SIGCONT)
            # it is the only worker: it gets both messages again and finishes them
            assert [await r.get(timeout=20) for r in long] == [1, 2]
            # every slot came back: three tasks run at once
            three = [await srv.send_task(Signature("overlap", args=[1.0])) for _ in range(3)]
            for r in three:
                await r.get(timeout=20)
            assert await _max_running(rc, cfg) == 3
        assert await rc.zcard(q.leases) == 0


def _claimed(task_id: str, token: str) -> Claimed:
    return Claimed(QUEUE, task_id, b"{}", 1, token, False)


async def test_in_flight_keeps_two_deliveries_of_one_id_apart() -> None:
    in_flight = InFlight()
    first, second = _claimed("x", "nonce-a.1"), _claimed("x", "nonce-b.1")
    tasks = TaskSet()
    t1 = tasks.spawn(anyio.sleep_forever())
    t2 = tasks.spawn(anyio.sleep_forever())
    in_flight.add(first, t1)
    in_flight.add(second, t2)
    assert len(in_flight) == 2
    # the first delivery's lease is lost: only its run is stopped, only its slot freed
    assert in_flight.stop([first.token]) == 1
    assert in_flight.forget([first.token]) == 1
    assert list(in_flight.by_token) == [second.token]
    await anyio.lowlevel.checkpoint()
    assert t1.cancelled()
    assert not t2.done()
    assert in_flight.forget([second.token]) == 1
    assert len(in_flight) == 0
    tasks.cancel_all()
    await tasks.wait()


# -- a worker killed while idle -------------------------------------------------------------------


async def test_a_worker_killed_while_idle_strands_nothing(
    config: Config, rc: aioredis.Redis, tmp_path: Path
) -> None:
    """Seen: a message sent right after an idle worker was killed was handed (leased) to the dead
    worker's inbox and waited out the whole lease before anyone ran it."""
    cfg = tuned(config, lease_timeout=60.0, heartbeat_interval=5.0)
    async with Server(cfg) as srv:
        warm = await srv.send_task(Signature("whoami", args=[0.0]))
        async with worker_process(cfg, tmp_path / "doomed.log", 5) as doomed:
            dead_pid = await warm.get(timeout=15)
            # idle now, blocked waiting for work
            doomed.kill()
            await wait_exit(doomed, 5)
        r = await srv.send_task(Signature("whoami", args=[0.0]))
        async with worker_process(cfg, tmp_path / "next.log", 5):
            # well within the 60 s lease: nothing was leased to the dead worker
            pid = await r.get(timeout=15)
        assert pid != dead_pid
        assert await rc.zcard(srv.keys.queue(QUEUE).leases) == 0


# -- Redis error replies --------------------------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


def _own_config(own_redis: RedisProcess, redis_config: RedisConfig, **redis: Any) -> Config:
    fields = {"read_timeout": 2.0, **redis}
    return Config(
        broker=own_redis.url,
        results_expire_in=600,
        shutdown_grace=2.0,
        redis=msgspec.structs.replace(redis_config, **fields),
    )


async def echo(value: int) -> int:
    return value


async def test_out_of_memory_replies_are_waited_out_and_lose_nothing(
    own_redis: RedisProcess, redis_config: RedisConfig
) -> None:
    """Seen: an OOM reply to the flusher's settle killed the worker (only connection errors were
    retried); send_task raised redis-py's OutOfMemoryError, outside our error tree."""
    cfg = _own_config(own_redis, redis_config)
    admin = aioredis.Redis(**own_redis.connection_kwargs())
    gate = anyio.Event()

    async def gated(value: int) -> int:
        await gate.wait()
        return value

    try:
        async with Server(cfg) as srv:
            srv.register_task("gated", gated)
            srv.register_task("echo", echo)
            results = [await srv.send_task(Signature("gated", args=[i])) for i in range(5)]
            async with running_worker(srv, 10) as worker:

                async def all_claimed() -> bool:
                    states = [await r.get_state() for r in results]
                    return all(s is not None and s.state is State.STARTED for s in states)

                await eventually(all_claimed, timeout=10)
                await admin.config_set("maxmemory", 1)  # every write is refused now
                with pytest.raises(BrokerRefused) as info:
                    await srv.send_task(Signature("echo", args=[99]))
                assert info.value.reply.startswith("OOM")
                assert info.value.transient
                assert f"127.0.0.1:{own_redis.port}" in str(info.value)
                gate.set()  # the tasks finish while their outcomes cannot be written
                flusher_tries = 0

                async def settles_refused() -> bool:
                    nonlocal flusher_tries
                    info = await admin.info("stats")
                    flusher_tries = int(info.get("total_error_replies", 0))
                    return flusher_tries >= 3

                await eventually(settles_refused, timeout=10)
                await admin.config_set("maxmemory", 0)
                assert [await r.get(timeout=15) for r in results] == list(range(5))
                assert await (await srv.send_task(Signature("echo", args=[7]))).get(timeout=10) == 7
                assert worker._consumer is not None  # it never stopped
    finally:
        await admin.config_set("maxmemory", 0)
        await admin.aclose()


async def test_a_busy_script_is_waited_out(
    own_redis: RedisProcess, redis_config: RedisConfig
) -> None:
    """BUSY (another client's script runs past lua-time-limit): every loop waits it out."""
    cfg = _own_config(own_redis, redis_config)
    admin = aioredis.Redis(**own_redis.connection_kwargs())
    await admin.config_set("lua-time-limit", 50)
    blocker = aioredis.Redis(**own_redis.connection_kwargs(), socket_timeout=30)
    try:
        async with Server(cfg) as srv:
            srv.register_task("echo", echo)
            async with running_worker(srv, 4), anyio.create_task_group() as tg:
                assert await (await srv.send_task(Signature("echo", args=[1]))).get(timeout=10) == 1

                async def spin() -> None:
                    with contextlib.suppress(Exception):  # killed by SCRIPT KILL below
                        await blocker.eval("while true do end", 0)

                tg.start_soon(spin)

                async def busy() -> bool:
                    try:
                        await srv.send_task(Signature("echo", args=[2]))
                    except BrokerRefused as exc:
                        return exc.reply.startswith("BUSY") and exc.transient
                    return False

                await eventually(busy, timeout=10)
                killer = aioredis.Redis(**own_redis.connection_kwargs())
                try:
                    await killer.script_kill()
                finally:
                    await killer.aclose()

                async def script_gone() -> bool:  # a killed script stops at its next check
                    try:
                        return bool(await admin.ping())
                    except ResponseError:
                        return False

                await eventually(script_gone, timeout=10)
                r3 = await srv.send_task(Signature("echo", args=[3]))
                assert await r3.get(timeout=10) == 3
    finally:
        await blocker.aclose()
        await admin.aclose()


# -- Redis stopped longer than the lease ----------------------------------------------------------


async def test_redis_paused_longer_than_the_lease_reaps_no_live_worker(
    own_redis: RedisProcess, redis_config: RedisConfig
) -> None:
    """Seen: Redis stopped (SIGSTOP) for 3 s with a 2 s lease while 10 tasks of 6 s ran on a live
    worker with free slots; when it came back, the first claim reaped every lease and the worker
    took its own running tasks again, one of them 5 times, until it was dead-lettered. The
    queue's lease clock counts such a gap as at most a short step: no live lease expires."""
    cfg = _own_config(
        own_redis,
        redis_config,
        lease_timeout=2.0,
        heartbeat_interval=1.5,  # after the pause, a claim comes before the next heartbeat
        read_timeout=1.0,  # calls made during the pause time out and are retried after it
        connect_timeout=1.0,
        max_deliveries=5,
    )
    runs: dict[str, int] = {}
    all_running = anyio.Event()

    async def seven_seconds(ctx_id: str) -> str:
        runs[ctx_id] = runs.get(ctx_id, 0) + 1
        if len(runs) == 10:
            all_running.set()
        await anyio.sleep(7.0)
        return ctx_id

    async with Server(cfg) as srv:
        srv.register_task("seven", seven_seconds)
        srv.register_task("echo", echo)
        results = [await srv.send_task(Signature("seven", args=[f"t{i}"])) for i in range(10)]
        async with running_worker(srv, 20):
            with anyio.fail_after(10):
                await all_running.wait()
            own_redis.pause()
            try:
                # The scenario: Redis gone for longer than a lease, long enough that the
                # worker's heartbeat (its retries timing out) has given up until its next beat.
                await anyio.sleep(5.0)
            finally:
                own_redis.resume()
            # another worker claims first (here: a claim of nothing, which reaps what expired)
            assert await srv.get_broker().claim(QUEUE, 0, []) == []
            fresh = [await srv.send_task(Signature("echo", args=[i])) for i in range(5)]
            assert [await r.get(timeout=20) for r in fresh] == list(range(5))
            values = [await r.get(timeout=30) for r in results]
        assert values == [f"t{i}" for i in range(10)]
        assert runs == {f"t{i}": 1 for i in range(10)}, "a live worker's task ran again"
        assert await srv.get_broker().get_dead_letters(QUEUE) == []


# -- chords whose members finish far apart ---------------------------------------------------------


async def test_a_chord_whose_members_finish_further_apart_than_the_result_ttl_fires(
    config: Config,
) -> None:
    """Seen: each member's success reset the chord's results to expire after results_expire_in;
    a member slower than that found the earlier results gone and the callback never ran."""
    cfg = msgspec.structs.replace(config, results_expire_in=1)
    release = anyio.Event()

    async def quick(i: int) -> int:
        return i

    async def slow(i: int) -> int:
        await release.wait()
        return i

    async def total(*values: int) -> int:
        return sum(values)

    async with Server(cfg) as srv:
        srv.register_tasks({"quick": quick, "slow": slow, "total": total})
        chord = Chord(
            Group(Signature("quick", args=[1]), Signature("slow", args=[2])), Signature("total")
        )
        cr = await srv.send_chord(chord)
        first = cr.group_results[0]
        async with running_worker(srv, 4):
            assert await first.get(timeout=10) == 1

            async def first_result_expired() -> bool:  # results_expire_in has passed
                return await first.get_state() is None

            await eventually(first_result_expired, timeout=10)
            release.set()
            assert await cr.get(timeout=10) == 3


# -- cancel ----------------------------------------------------------------------------------------


async def test_canceling_a_dead_letter_keeps_it_and_its_follow_ups(
    config: Config, rc: aioredis.Redis
) -> None:
    """Seen: cancel deleted a dead-lettered message (and said True), losing the dead letter and
    the on_error callbacks still to be sent for it."""
    cfg = tuned(config, lease_timeout=0.3, heartbeat_interval=0.1, max_deliveries=1)
    notes: list[str] = []

    async def note(error: str) -> None:
        notes.append(error)

    async with Server(cfg) as srv:
        srv.register_task("note", note)
        srv.register_task("echo", echo)
        sig = Signature("echo", args=[1], on_error=[Signature("note")])
        await srv.send_task(sig)
        broker = srv.get_broker()
        (claimed,) = await broker.claim(QUEUE, 1, ["echo"])  # and never settled: a crash

        async def dead() -> bool:
            await broker.claim(QUEUE, 0, [])
            return bool(await broker.get_dead_letters(QUEUE))

        await eventually(dead, timeout=10)
        assert await srv.cancel_delayed_task(sig) is False
        (letter,) = await broker.get_dead_letters(QUEUE)
        assert letter.task_id == claimed.id
        async with running_worker(srv, 2):  # settles the aftermath: on_error runs

            async def noted() -> bool:
                return bool(notes)

            await eventually(noted, timeout=10)
        assert "dead-lettered" in notes[0]
        assert len(await broker.get_dead_letters(QUEUE)) == 1


async def test_a_canceled_chain_link_stays_canceled_however_long_its_predecessor_takes(
    config: Config,
) -> None:
    """Seen: the tombstone of a link not yet queued lived results_expire_in seconds; a
    predecessor slower than that let the canceled link run."""
    cfg = msgspec.structs.replace(config, results_expire_in=1)
    release = anyio.Event()
    ran: list[int] = []

    async def first(i: int) -> int:
        await release.wait()
        return i

    async def then(*values: int) -> int:
        ran.append(sum(values))
        return sum(values)

    async def marker_task() -> int:
        return 0

    async with Server(cfg) as srv:
        srv.register_tasks({"first": first, "then": then, "marker": marker_task})
        chain = Chain(Signature("first", args=[1]), Signature("then", args=[10]))
        ch = await srv.send_chain(chain)
        link = chain.tasks[1]
        async with running_worker(srv, 4):
            assert await srv.cancel_delayed_task(link) is True
            probe = await srv.send_task(Signature("marker"))
            assert await probe.get(timeout=10) == 0

            async def ttl_passed() -> bool:  # results_expire_in has passed since the cancel
                return await probe.get_state() is None

            await eventually(ttl_passed, timeout=10)
            release.set()
            assert await ch.results[0].get(timeout=10) == 1
            with pytest.raises(TaskCanceled):
                await ch.results[1].get(timeout=10)
        assert ran == []


# -- dead letters and the known-queues set stay bounded ------------------------------------------


async def _dead_letter(srv: Server, n: int) -> list[str]:
    """Send ``n`` echo tasks and dead-letter each (claimed, never settled, max_deliveries 1),
    settling each one's aftermath as a worker would."""
    broker = srv.get_broker()
    ids = []
    for i in range(n):
        r = await srv.send_task(Signature("echo", args=[i]))
        await broker.claim(QUEUE, 1, ["echo"])
        ids.append(r.task_id)

        async def gone(task_id: str = r.task_id) -> bool:
            offered = await broker.claim(QUEUE, 0, [])
            aftermath = [Done(c.id, "", b"") for c in offered if c.dead_reason is not None]
            if aftermath:
                await broker.settle(SettleBatch(QUEUE, aftermath=aftermath))
            return any(d.task_id == task_id for d in await broker.get_dead_letters(QUEUE, 0, 1000))

        await eventually(gone, timeout=10)
    return ids


async def test_dead_letters_are_kept_by_count_and_age_and_can_be_paged_requeued_purged(
    config: Config, rc: aioredis.Redis
) -> None:
    cfg = tuned(
        config, lease_timeout=0.3, heartbeat_interval=0.1, max_deliveries=1, dead_letters_max=4
    )
    async with Server(cfg) as srv:
        srv.register_task("echo", echo)
        broker = srv.get_broker()
        ids = await _dead_letter(srv, 6)
        # retention by count: the two oldest went at a later claim
        await broker.claim(QUEUE, 0, [])
        kept = [d.task_id for d in await broker.get_dead_letters(QUEUE, 0, 100)]
        assert kept == ids[2:]
        assert not await rc.exists(srv.keys.queue(QUEUE).record(ids[0]))
        # paged, oldest first
        assert [d.task_id for d in await broker.get_dead_letters(QUEUE, 1, 2)] == ids[3:5]
        # requeue by id; purge by id; then all
        assert await broker.requeue_dead_letters(QUEUE, [ids[2], "no-such-id"]) == 1
        assert await broker.purge_dead_letters(QUEUE, [ids[3]]) == 1
        assert [d.task_id for d in await broker.get_dead_letters(QUEUE)] == ids[4:]
        assert await broker.purge_dead_letters(QUEUE) == 2
        assert await broker.get_dead_letters(QUEUE) == []
        pending = await broker.get_pending_tasks(QUEUE)
        assert [s.id for s in pending] == [ids[2]]

    aged = tuned(config, lease_timeout=0.3, heartbeat_interval=0.1, max_deliveries=1)
    fresh_keys = f"{aged.redis.key_prefix}-aged"
    aged = msgspec.structs.replace(
        aged,
        redis=msgspec.structs.replace(aged.redis, dead_letters_max_age=1, key_prefix=fresh_keys),
    )
    async with Server(aged) as srv:
        srv.register_task("echo", echo)
        broker = srv.get_broker()
        (old,) = await _dead_letter(srv, 1)

        async def aged_out() -> bool:  # retention by age: gone at a claim a second later
            await broker.claim(QUEUE, 0, [])
            return old not in {d.task_id for d in await broker.get_dead_letters(QUEUE)}

        await eventually(aged_out, timeout=10)


async def test_the_known_queues_set_forgets_idle_queues_only(
    server: Server, rc: aioredis.Redis
) -> None:
    broker = server.get_broker()
    key = server.keys.queues
    # the previous release's SET is converted on first use
    await rc.sadd(key, "legacy")
    await broker.queues.remember("busy")
    assert await broker.queues.all() == {"legacy", "busy"}
    day_ago = (time.time() - 2 * 86_400) * 1000
    await rc.zadd(key, {"legacy": day_ago, "idle": day_ago, "delayed": day_ago, "busy": day_ago})
    await rc.zadd(server.keys.queue("delayed").delayed, {"some-id": 1})
    # "busy" was refreshed just before the prune read it: compare-and-delete keeps it
    await rc.zadd(key, {"busy": time.time() * 1000})
    assert sorted(await broker.queues.prune()) == ["idle", "legacy"]
    assert await broker.queues.all() == {"delayed", "busy"}


# -- a stop with every slot busy ------------------------------------------------------------------


async def test_the_shutdown_grace_holds_with_every_slot_busy(
    config: Config, server: Server, rc: aioredis.Redis, tmp_path: Path
) -> None:
    """Seen: with shutdown_grace=2 and every slot running a 30 s task, the worker took ~30 s to
    stop after SIGTERM (it waited for a free slot before it noticed the stop)."""
    cfg = tuned(config, shutdown_grace=2.0, lease_timeout=60.0, heartbeat_interval=1.0)
    started, finished = marker(cfg, "started"), marker(cfg, "finished")
    results = [await server.send_task(Signature("slow", args=[i, 30.0])) for i in range(4)]
    async with worker_process(cfg, tmp_path / "busy.log", 4) as proc:

        async def all_started() -> bool:
            return len(await counts(rc, started)) == 4

        await eventually(all_started, timeout=10)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await wait_exit(proc, 20) == 0
        took = time.monotonic() - sent
    assert took < 6, f"stopping took {took:.1f}s with shutdown_grace=2"
    assert not await counts(rc, finished)
    q = server.keys.queue(QUEUE)
    assert await rc.zcard(q.leases) == 0
    ready: list[bytes] = await rc.zrange(q.ready, 0, -1)  # type: ignore[assignment]
    assert sorted(m.decode() for m in ready) == sorted(r.task_id for r in results)


# -- a separate result backend gets final states from a resent settle -----------------------------


@pytest.fixture
async def backend_redis() -> AsyncIterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


async def test_a_resent_settle_still_reports_its_outcomes_applied(
    config: Config, backend_redis: RedisProcess
) -> None:
    """Seen: a settle resent after its reply was lost found its messages acked already and
    reported them lost, so the worker never wrote their final states to a separate backend."""
    cfg = msgspec.structs.replace(config, result_backend=backend_redis.url)
    async with Server(cfg) as srv:
        srv.register_task("echo", echo)
        r = await srv.send_task(Signature("echo", args=[5]))
        broker = srv.get_broker()
        (c,) = await broker.claim(QUEUE, 1, ["echo"])
        state = encode(TaskState(task_id=c.id, state=State.SUCCESS, task_name="echo", results=[5]))
        batch = SettleBatch(QUEUE, done=[Done(c.id, c.token, state)], request_id=uuid.uuid4().hex)
        assert await broker.settle(batch) == []
        assert await broker.settle(batch) == []  # the same call again: not "lost"
        assert (await r.get_state()) is not None
