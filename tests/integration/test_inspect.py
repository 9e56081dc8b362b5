"""The inspection API (``server.inspect()``, API.md "Operations"): every method against a real
Redis with real workers (in this process, and a worker process killed with -9 that drops out of
``workers``), paging checked page by page, the actions checked for their effect in Redis, and
reading checked to write nothing at all.

Messages are put in each place for real: sent (ready, delayed), claimed by ``broker.claim`` with a
worker name (running), claimed by a worker that does not know them (parked) or over their limit
(held), claimed by a worker that then vanished on a queue with ``max_deliveries=1`` (dead).
Synchronisation is by polling with deadlines (``eventually``).
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from tests.support.workers import worker_process
from vecna_async import (
    Chain,
    Chord,
    Config,
    Context,
    Group,
    RetryTaskLater,
    Server,
    Signature,
    State,
)
from vecna_async.inspection import Inspector, QueueInfo, RunningTask

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"
HOUR = timedelta(hours=1)


def in_an_hour(seconds: float = 0) -> datetime:
    return datetime.now(UTC) + HOUR + timedelta(seconds=seconds)


async def make_dead_letters(config: Config, queue: str, n: int, name: str = "slow") -> list[str]:
    """``n`` dead letters in ``queue``: each claimed by a worker that then vanished, on a queue
    given up after one delivery, so a claim after its lease expired dead-letters it."""
    fast = tuned(config, lease_timeout=0.6, heartbeat_interval=0.2, max_deliveries=1)
    async with Server(fast) as srv:
        sigs = [Signature(name, args=[i, 0.0], routing_key=queue) for i in range(n)]
        sent = await srv.send_tasks(sigs)
        broker = srv.get_broker()
        assert len(await broker.claim(queue, n, [name], worker="vanished")) == n

        async def all_dead() -> bool:
            await broker.claim(queue, 0, [])  # a claim reaps expired leases
            (counts,) = await broker.listing.counts([queue])
            return counts.dead_letters == n

        await eventually(all_dead, timeout=10, interval=0.05)
    return [r.task_id for r in sent]


async def redis_time(rc: aioredis.Redis) -> datetime:
    seconds, micros = await rc.time()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


async def writes(rc: aioredis.Redis) -> int:
    """Redis's count of changes since the last save: every write moves it."""
    return int((await rc.info("persistence"))["rdb_changes_since_last_save"])


# -- the surface --------------------------------------------------------------------------------


def test_the_inspector_has_the_methods_of_api_md() -> None:
    def params(name: str) -> list[str]:
        return list(inspect.signature(getattr(Inspector, name)).parameters)

    assert callable(Server.inspect)
    for name in ("queues", "workers", "periodic"):
        assert params(name) == ["self"]
    assert params("running")[:2] == ["self", "queue"]
    assert params("delayed") == ["self", "queue", "offset", "limit"]
    assert params("dead_letters") == ["self", "queue", "offset", "limit"]
    assert params("task")[:2] == ["self", "task_id"]
    assert params("requeue_dead_letters") == ["self", "queue", "ids"]
    assert params("purge_dead_letters") == ["self", "queue", "ids"]
    assert params("cancel_delayed") == ["self", "queue", "task_id"]
    assert params("cancel_periodic") == ["self", "code"]
    for name in ("delayed", "dead_letters"):
        defaults = inspect.signature(getattr(Inspector, name)).parameters
        assert (defaults["offset"].default, defaults["limit"].default) == (0, 100)
    fields = list(QueueInfo.__dataclass_fields__)
    assert fields[:6] == ["name", "ready", "delayed", "running", "dead_letters", "parked"]


# -- reading ------------------------------------------------------------------------------------


async def test_queues_count_every_place_a_message_can_be(server: Server, config: Config) -> None:
    server.register_task("known", lambda: None)
    server.register_task("limited", lambda: None, concurrency_limit=1)
    await server.send_tasks([Signature("ghost") for _ in range(2)])
    await server.send_tasks([Signature("limited") for _ in range(2)])
    await server.send_tasks([Signature("known") for _ in range(3)])
    await server.send_tasks([Signature("known", eta=in_an_hour()) for _ in range(2)])
    # parks both ghosts, leases one limited (the other is held), then one known
    claimed = await server.get_broker().claim(QUEUE, 2, ["known", "limited"], worker="w1")
    assert len(claimed) == 2
    await make_dead_letters(config, "failing", 3)

    queues = await server.inspect(queues=["failing", "reports"]).queues()
    assert queues == [
        QueueInfo("failing", ready=0, delayed=0, running=0, dead_letters=3, parked=0, held=0),
        QueueInfo("reports", ready=0, delayed=0, running=0, dead_letters=0, parked=0, held=0),
        QueueInfo(QUEUE, ready=2, delayed=2, running=2, dead_letters=0, parked=2, held=1),
    ]
    # without naming them, the queues known to Redis: the default one, and any with delayed work
    assert [q.name for q in await server.inspect().queues()] == [QUEUE]


async def test_running_tasks_show_their_worker_lease_deadline_and_start(
    server: Server, rc: aioredis.Redis
) -> None:
    release = anyio.Event()

    @server.task(name="hold")
    async def hold(i: int) -> int:
        await release.wait()
        return i

    insp = server.inspect()
    sent = [await hold.send(i) for i in range(2)]
    async with running_worker(server, 5):
        running = await eventually(lambda: _at_least(insp.running(QUEUE), 2), timeout=10)
        now = await redis_time(rc)
        lease = timedelta(seconds=server.config.redis.lease_timeout)
        assert {t.id for t in running} == {r.task_id for r in sent}
        for t in running:
            assert (t.name, t.worker, t.queue) == ("hold", "test-worker", QUEUE)
            assert t.started is not None
            assert now - timedelta(seconds=10) < t.started <= now
            assert now < t.lease_deadline <= now + lease + timedelta(seconds=0.5)
        # heartbeats renew the lease: a while later its deadline is later
        first = running[0]

        async def renewed() -> bool:
            (again,) = [t for t in await insp.running(QUEUE) if t.id == first.id]
            return again.lease_deadline > first.lease_deadline and again.started == first.started

        await eventually(renewed, timeout=10)
        info = await insp.task(first.id)
        assert info is not None
        assert (info.state, info.place, info.worker) == (State.STARTED, "running", "test-worker")
        assert info.started == first.started
        release.set()
        await eventually(lambda: _empty(insp.running(QUEUE)), timeout=10)


async def _at_least(listing: Awaitable[list[RunningTask]], n: int) -> list[RunningTask]:
    items = await listing
    return items if len(items) >= n else []


async def _empty(listing: Awaitable[list[RunningTask]]) -> bool:
    return not await listing


async def test_listings_are_paged(server: Server, config: Config) -> None:
    insp = server.inspect()
    sigs = [Signature("later", args=[i], eta=in_an_hour(i)) for i in range(25)]
    await server.send_tasks(sigs)
    pages = [await insp.delayed(QUEUE, offset, 10) for offset in (0, 10, 20, 30)]
    assert [len(p) for p in pages] == [10, 10, 5, 0]
    listed = [t for page in pages for t in page]
    assert [t.id for t in listed] == [s.id for s in sigs]  # earliest due first, no repeats
    assert all(t.name == "later" and t.queue == QUEUE for t in listed)
    dues = [t.due for t in listed]
    assert dues == sorted(dues)
    assert abs(dues[0] - sigs[0].eta).total_seconds() < 0.01  # type: ignore[operator]
    assert [t.id for t in await insp.delayed(QUEUE, 3, 2)] == [sigs[3].id, sigs[4].id]

    dead = await make_dead_letters(config, "failing", 7)
    pages_of_dead = [await insp.dead_letters("failing", offset, 3) for offset in (0, 3, 6, 9)]
    assert [len(p) for p in pages_of_dead] == [3, 3, 1, 0]
    letters = [d for page in pages_of_dead for d in page]
    assert sorted(d.id for d in letters) == sorted(dead)
    assert len({d.id for d in letters}) == 7
    assert [d.when for d in letters] == sorted(d.when for d in letters)  # oldest first
    for d in letters:
        assert (d.name, d.deliveries, d.queue) == ("slow", 1, "failing")
        assert "every lease expired without an ack" in d.reason

    await server.send_tasks([Signature("job", args=[i], routing_key="busy") for i in range(5)])
    await server.get_broker().claim("busy", 5, ["job"], worker="w9")
    running_pages = [await insp.running("busy", offset, 2) for offset in (0, 2, 4)]
    assert [len(p) for p in running_pages] == [2, 2, 1]
    assert len({t.id for page in running_pages for t in page}) == 5
    deadlines = [t.lease_deadline for page in running_pages for t in page]
    assert deadlines == sorted(deadlines)


async def test_periodic_entries_with_next_and_last_fire(server: Server, rc: aioredis.Redis) -> None:
    server.register_tasks(dict.fromkeys(("tick", "a", "b", "c", "cb"), _noop))
    insp = server.inspect()
    await server.send_periodic_task("* * * * * *", Signature("tick", code="every-second"))
    nightly = "0 6 * * *"
    paris = "Europe/Paris"
    group = Group(Signature("a"), Signature("b"), group_id="pair")
    await server.send_periodic_group(nightly, group, tz=paris)
    chain = Chain(Signature("a", code="steps"), Signature("b"), Signature("c"))
    await server.send_periodic_chain(nightly, chain, tz=paris)
    chord = Chord(Group(Signature("a"), Signature("b"), group_id="fan"), Signature("cb"))
    await server.send_periodic_chord(nightly, chord, tz=paris)

    entries = {p.code: p for p in await insp.periodic()}
    assert sorted(entries) == ["every-second", "fan", "pair", "steps"]
    assert (entries["pair"].kind, entries["pair"].tasks) == ("group", ["a", "b"])
    assert (entries["steps"].kind, entries["steps"].tasks) == ("chain", ["a", "b", "c"])
    assert (entries["fan"].kind, entries["fan"].tasks) == ("chord", ["a", "b", "cb"])
    fan = entries["fan"]
    assert (fan.spec, fan.tz, fan.quarantined, fan.queues) == (nightly, paris, None, [QUEUE])
    assert fan.next_fire is not None
    assert fan.next_fire.astimezone(ZoneInfo(paris)).hour == 6
    assert all(p.last_fire is None for p in entries.values())  # nothing fired yet

    async with server.scheduler():

        async def fired() -> Any:
            (tick,) = [p for p in await insp.periodic() if p.code == "every-second"]
            return tick if tick.last_fire is not None else None

        tick = await eventually(fired, timeout=10)
    assert tick.next_fire is not None
    assert tick.last_fire is not None
    assert tick.next_fire > tick.last_fire
    assert tick.last_fire <= await redis_time(rc)

    # a definition no scheduler can fire is listed as quarantined, with why
    await rc.hset(server.keys.periodic_defs, "broken", b"\xff not JSON")
    await rc.zadd(server.keys.periodic_next, {"broken": 0})
    async with server.scheduler():
        broken = await eventually(lambda: _entry(insp, "broken", quarantined=True), timeout=10)
    assert broken.quarantined is not None
    assert "not a periodic definition" in broken.quarantined
    assert (broken.spec, broken.next_fire) == ("", None)

    assert await insp.cancel_periodic("every-second") is True
    assert "every-second" not in {p.code for p in await insp.periodic()}
    assert not await rc.hexists(server.keys.periodic_last, "every-second")
    assert await rc.zscore(server.keys.periodic_next, "every-second") is None
    assert await insp.cancel_periodic("every-second") is False


async def _noop() -> None:
    return None


async def _entry(insp: Inspector, code: str, *, quarantined: bool) -> Any:
    for p in await insp.periodic():
        if p.code == code and (p.quarantined is not None) == quarantined:
            return p
    return None


async def test_one_task_by_id_through_its_life(server: Server, rc: aioredis.Redis) -> None:
    release = anyio.Event()

    @server.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @server.task(name="boom")
    async def boom() -> None:
        raise ValueError("no good")

    @server.task(name="report")
    async def report(ctx: Context, total: int) -> str:
        await ctx.report_progress({"done": 1, "of": total})
        await release.wait()
        return "done"

    @server.task(name="flaky", retry_count=3)
    async def flaky() -> None:
        raise RetryTaskLater("the API said 429", delay=60)

    insp = server.inspect()
    assert await insp.task("0123456789abcdef") is None
    waiting = await add.send(1, 2)
    delayed = await server.send_task(Signature("add", args=[3, 4], eta=in_an_hour()))
    info = await insp.task(waiting.task_id)
    assert info is not None
    assert (info.state, info.place, info.name, info.queue) == (State.PENDING, "ready", "add", QUEUE)
    assert (info.args, info.kwargs, info.attempt, info.deliveries) == ([1, 2], {}, 1, 0)
    info = await insp.task(delayed.task_id)
    assert info is not None
    assert info.eta is not None
    assert (info.place, info.state) == ("delayed", State.PENDING)
    assert abs((info.eta - in_an_hour()).total_seconds()) < 5

    async with running_worker(server, 5), running_worker(server, 5, queue="side"):
        assert await waiting.get(timeout=10) == 3
        failing = await boom.send()
        with pytest.raises(Exception, match="no good"):
            await failing.get(timeout=10)
        progressing = await report.send(3)
        retrying = await flaky.send()
        aside = await server.send_task(Signature("add", args=[5, 5], routing_key="side"))
        assert await aside.get(timeout=10) == 10

        done = await insp.task(waiting.task_id)
        assert done is not None
        assert (done.state, done.place, done.result, done.args) == (State.SUCCESS, "", 3, None)
        failed = await insp.task(failing.task_id)
        assert failed is not None
        assert failed.state is State.FAILURE
        assert "ValueError: no good" in failed.error
        assert "no good" in failed.traceback

        async def reported() -> Any:
            found = await insp.task(progressing.task_id)
            return found if found is not None and found.progress is not None else None

        running = await eventually(reported, timeout=10)
        assert running.progress == {"done": 1, "of": 3}
        assert (running.place, running.worker) == ("running", "test-worker")

        async def retried() -> Any:
            found = await insp.task(retrying.task_id)
            return found if found is not None and found.state is State.RETRY else None

        retry = await eventually(retried, timeout=10)
        assert (retry.place, retry.attempt, retry.retry_count) == ("delayed", 2, 3)
        assert retry.eta is not None
        assert 50 < (retry.eta - await redis_time(rc)).total_seconds() <= 60
        # a queue named nowhere but in a live worker is searched too
        found = await insp.task(aside.task_id)
        assert found is not None
        assert (found.queue, found.result) == ("side", 10)
        assert await insp.task(aside.task_id, queue=QUEUE) is None
        release.set()
        assert await progressing.get(timeout=10) == "done"


# -- actions ------------------------------------------------------------------------------------


async def test_dead_letters_are_requeued_and_purged(
    server: Server, config: Config, rc: aioredis.Redis
) -> None:
    insp = server.inspect()
    q = server.keys.queue(QUEUE)
    dead = await make_dead_letters(config, QUEUE, 5)
    assert await insp.requeue_dead_letters(QUEUE, [dead[0], "not-a-dead-letter"]) == 1
    assert await rc.zscore(q.ready, dead[0]) is not None
    assert await rc.zscore(q.dead, dead[0]) is None
    assert await insp.purge_dead_letters(QUEUE, [dead[1]]) == 1
    assert not await rc.exists(q.record(dead[1]))
    assert await insp.purge_dead_letters(QUEUE, [dead[1]]) == 0
    assert await insp.requeue_dead_letters(QUEUE) == 3  # all the others
    assert await rc.zcard(q.dead) == 0
    assert await rc.zcard(q.ready) == 4
    assert await insp.purge_dead_letters(QUEUE) == 0


async def test_a_waiting_task_is_canceled_and_nothing_else(
    server: Server, rc: aioredis.Redis
) -> None:
    insp = server.inspect()
    q = server.keys.queue(QUEUE)
    later = await server.send_task(Signature("later", eta=in_an_hour()))
    assert await insp.cancel_delayed(QUEUE, later.task_id) is True
    assert await rc.zscore(q.delayed, later.task_id) is None
    state = await later.get_state()
    assert state is not None
    assert state.state is State.CANCELED
    # an id that is not waiting there: nothing is canceled, not even ahead (no tombstone)
    assert await insp.cancel_delayed(QUEUE, "never-sent") is False
    assert await rc.zscore(q.tombstones, "never-sent") is None
    started = await server.send_task(Signature("job"))
    await server.get_broker().claim(QUEUE, 1, ["job"], worker="w1")
    assert await insp.cancel_delayed(QUEUE, started.task_id) is False
    assert await rc.zscore(q.leases, started.task_id) is not None


# -- workers ------------------------------------------------------------------------------------


async def test_a_worker_killed_with_sigkill_drops_out_of_workers(
    config: Config, tmp_path: Path, rc: aioredis.Redis
) -> None:
    config = tuned(config, heartbeat_interval=0.3, lease_timeout=2.0)
    async with Server(config) as server:
        insp = server.inspect()
        log = tmp_path / "doomed-worker.log"
        async with worker_process(config, log, 3) as proc:

            async def listed() -> Any:
                return [w for w in await insp.workers() if w.name == "doomed-worker"]

            (worker,) = await eventually(listed, timeout=20)
            assert (worker.pid, worker.queues, worker.concurrency) == (proc.pid, [QUEUE], 3)
            assert worker.host
            assert worker.started <= worker.last_seen
            sent = await server.send_task(Signature("slow", args=[1, 60.0]))

            async def running_there() -> Any:
                return [t for t in await insp.running(QUEUE) if t.id == sent.task_id]

            (task,) = await eventually(running_there, timeout=10)
            assert task.worker == "doomed-worker"
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = await redis_time(rc)

            async def gone() -> bool:
                return not await listed()

            await eventually(gone, timeout=10)
            # three heartbeat intervals without one, give or take the last beat
            assert await redis_time(rc) - killed_at < timedelta(seconds=5)
            # its task is still leased to it until the lease runs out (then any claim reaps it)
            (task,) = await running_there()
            assert task.worker == "doomed-worker"
            assert task.lease_deadline < killed_at + timedelta(seconds=2.5)


# -- reading never writes -------------------------------------------------------------------------


async def test_reading_never_writes(server: Server, config: Config, rc: aioredis.Redis) -> None:
    server.register_task("known", _noop)
    await make_dead_letters(config, QUEUE, 2)
    sent = await server.send_task(Signature("known"))
    await server.send_task(Signature("known", eta=in_an_hour()))
    await server.send_task(Signature("ghost"))
    await server.send_periodic_task("0 6 * * *", Signature("known", code="daily"))
    async with running_worker(server, 2):
        await sent.get(timeout=10)
    # the known-queues set as the previous release left it (a SET): read, not converted
    await rc.delete(server.keys.queues)
    await rc.sadd(server.keys.queues, "legacy")
    insp = server.inspect()
    before = await writes(rc)
    snap = await insp.snapshot()
    assert "legacy" in {q.name for q in snap.queues}
    for queue in ("legacy", QUEUE):
        await insp.running(queue)
        await insp.delayed(queue)
        await insp.dead_letters(queue)
    await insp.task(sent.task_id)
    await insp.task("unknown-id")
    await insp.find_queue(sent.task_id)
    await insp.now()
    assert await writes(rc) == before
    assert await rc.type(server.keys.queues) == b"set"
