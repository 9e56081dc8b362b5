"""Delayed tasks (``eta``), canceling them, the scheduler's wake-ups and its clock.

Tasks are defined here and record in Redis (under ``<key prefix>:dl:``) when they started, by the
local wall clock captured at import (``_wall``), so a test that moves ``time.time`` still measures
real time. Synchronisation is by awaiting results or polling with deadlines; to show that something
did NOT run, a test waits until the queue is idle (nothing ready, delayed, leased or parked) after
the moment it would have run.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import (
    Chain,
    Chord,
    Config,
    Group,
    RetryTaskLater,
    Server,
    Signature,
    State,
    TaskCanceled,
)
from vecna_async.backend.results import AsyncResult
from vecna_async.scheduler.scheduler import Scheduler

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"
_wall: Callable[[], float] = time.time  # the real clock, even while a test patches time.time


# -- tasks ---------------------------------------------------------------------------------------


class Marks:
    def __init__(self, rc_text: aioredis.Redis, prefix: str) -> None:
        self.rc_text = rc_text
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:dl:{name}"

    async def runs(self, tag: str) -> int:
        return int(await self.rc_text.hget(self.key("runs"), tag) or 0)

    async def started(self, tag: str) -> float | None:
        value = await self.rc_text.hget(self.key("started"), tag)
        return None if value is None else float(value)


def register(server: Server, marks: Marks) -> None:
    rc_text = marks.rc_text
    key = marks.key

    async def stamp(tag: str, *rest: Any) -> float:
        """Record when it started (real wall clock) and count its runs; return the start."""
        now = _wall()
        await rc_text.hset(key("started"), tag, repr(now))
        await rc_text.hincrby(key("runs"), tag, 1)
        return now

    async def record(i: int) -> None:
        await rc_text.hset(key("race-at"), str(i), repr(_wall()))
        await rc_text.hincrby(key("race"), str(i), 1)

    async def fail_once(tag: str) -> str:
        if await rc_text.hincrby(key("attempts"), tag, 1) == 1:
            raise RuntimeError(f"{tag}: first attempt fails")
        return tag

    async def later_once(tag: str) -> str:
        if await rc_text.hincrby(key("attempts"), tag, 1) == 1:
            raise RetryTaskLater("not yet", delay=timedelta(seconds=1))
        return tag

    async def slow_then_retry(tag: str) -> str:
        """First attempt: runs 0.5 s, then asks to be retried in 0.3 s; second: returns."""
        if await rc_text.hincrby(key("attempts"), tag, 1) == 1:
            await anyio.sleep(0.5)
            raise RetryTaskLater("again", delay=0.3)
        await rc_text.hincrby(key("runs"), tag, 1)
        return tag

    server.register_tasks(
        {
            "stamp": stamp,
            "record": record,
            "fail_once": fail_once,
            "later_once": later_once,
            "slow_then_retry": slow_then_retry,
        }
    )


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def marks(rc_text: aioredis.Redis, config: Config) -> Marks:
    return Marks(rc_text, config.redis.key_prefix)


@pytest.fixture
def app(server: Server, marks: Marks) -> Server:
    register(server, marks)
    return server


def in_ms(seconds: float) -> datetime:
    """An aware UTC datetime ``seconds`` from now, on a whole millisecond (the stored precision),
    so "started >= eta" compares like with like."""
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


async def redis_ms(rc_text: aioredis.Redis) -> int:
    seconds, micros = await rc_text.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def wait_redis_time(rc_text: aioredis.Redis, at_ms: int, timeout: float = 30.0) -> None:
    """Poll Redis's clock until it reads ``at_ms`` or later."""

    async def reached() -> bool:
        return await redis_ms(rc_text) >= at_ms

    await eventually(reached, timeout=timeout, interval=0.002)


async def queue_counts(rc_text: aioredis.Redis, server: Server) -> dict[str, int]:
    q = server.keys.queue(QUEUE)
    return {
        "ready": int(await rc_text.zcard(q.ready)),
        "delayed": int(await rc_text.zcard(q.delayed)),
        "leases": int(await rc_text.zcard(q.leases)),
        "parked": int(await rc_text.scard(q.parked)),
    }


async def wait_idle(rc_text: aioredis.Redis, server: Server, timeout: float = 10.0) -> None:
    async def idle() -> bool:
        return not any((await queue_counts(rc_text, server)).values())

    await eventually(idle, timeout=timeout)


async def state_of(result: AsyncResult[Any]) -> State:
    state = await result.get_state()
    assert state is not None, f"no state stored for {result.task_id}"
    return state.state


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def delayed_ids(server: Server) -> list[str | None]:
    return [s.id for s in await server.get_broker().get_delayed_tasks(QUEUE)]


async def canary_after(app: Server, rc_text: aioredis.Redis, eta: datetime) -> None:
    """Send a task due just after ``eta``, wait for it to run and for the queue to go idle: by
    then anything due at ``eta`` that was going to run has run."""
    after = eta + timedelta(seconds=0.1)
    canary = await app.send_task(Signature("stamp", args=["canary"], eta=after))
    await canary.get(timeout=10)
    await wait_idle(rc_text, app)


async def wait_listening(rc_text: aioredis.Redis, server: Server, n: int = 1) -> None:
    """Until ``n`` schedulers are subscribed to the wake-up channel."""

    async def subscribed() -> bool:
        reply = await rc_text.pubsub_numsub(server.keys.sched_channel)
        return int(reply[0][1]) >= n

    await eventually(subscribed)


async def wait_pass(sched: Scheduler, after: int) -> None:
    async def passed() -> bool:
        return sched.passes > after

    await eventually(passed)


# -- eta -----------------------------------------------------------------------------------------


async def test_eta_pending_until_due_then_runs_no_earlier(app: Server) -> None:
    async with running_worker(app, 10):
        eta = in_ms(1.0)
        r = await app.send_task(Signature("stamp", args=["eta"], eta=eta))
        assert await delayed_ids(app) == [r.task_id]
        while _wall() < eta.timestamp() - 0.1:  # observe it waiting
            assert await state_of(r) is State.PENDING
            await anyio.sleep(0.05)
        started = await r.get(timeout=5)
    late = started - eta.timestamp()
    assert 0 <= late < 0.3, f"started {late * 1000:.1f} ms after its ETA"


async def test_naive_eta_is_utc(app: Server, rc_text: aioredis.Redis) -> None:
    """With a local zone far from UTC, a naive ETA still means UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        aware = in_ms(0.8)
        naive = aware.replace(tzinfo=None)
        assert naive.timestamp() != aware.timestamp()  # the local zone really differs
        sig = Signature("stamp", args=["naive"], eta=naive)
        r = await app.send_task(sig)
        q = app.keys.queue(QUEUE)
        assert await rc_text.zscore(q.delayed, r.task_id) == ms(aware)
        (listed,) = await app.get_broker().get_delayed_tasks(QUEUE)
        assert listed.eta == aware
        async with running_worker(app, 5):
            started = await r.get(timeout=5)
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert 0 <= started - aware.timestamp() < 0.3


async def test_eta_in_the_past_runs_at_once(app: Server, rc_text: aioredis.Redis) -> None:
    async with running_worker(app, 5):
        sent = _wall()
        r = await app.send_task(Signature("stamp", args=["past"], eta=in_ms(-3600)))
        assert await rc_text.zscore(app.keys.queue(QUEUE).delayed, r.task_id) is None
        started = await r.get(timeout=5)
    assert started - sent < 0.5


async def test_get_delayed_tasks_lists_them_earliest_first(app: Server) -> None:
    later = Signature("stamp", args=["later"], eta=in_ms(60))
    sooner = Signature("stamp", args=["sooner"], eta=in_ms(30), retry_count=2)
    await app.send_task(later)
    await app.send_task(sooner)
    listed = await app.get_broker().get_delayed_tasks(QUEUE)
    assert [(s.id, s.name, s.args, s.eta) for s in listed] == [
        (sooner.id, "stamp", ["sooner"], sooner.eta),
        (later.id, "stamp", ["later"], later.eta),
    ]
    assert listed[0].retry_count == 2
    assert await app.get_broker().get_pending_tasks(QUEUE) == []
    assert await app.cancel_delayed_group(Group(later, sooner)) is True
    assert await app.get_broker().get_delayed_tasks(QUEUE) == []


# -- canceling -----------------------------------------------------------------------------------


async def test_cancel_delayed_task(app: Server, rc_text: aioredis.Redis, marks: Marks) -> None:
    eta = in_ms(0.6)
    sig = Signature("stamp", args=["canceled"], eta=eta)
    async with running_worker(app, 5):
        r = await app.send_task(sig)
        assert await app.cancel_delayed_task(sig) is True
        assert await state_of(r) is State.CANCELED
        with pytest.raises(TaskCanceled):
            await r.get(timeout=2)
        assert await delayed_ids(app) == []
        await canary_after(app, rc_text, eta)
    assert await marks.runs("canceled") == 0


async def test_cancel_by_task_id_with_or_without_an_eta(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """``cancel_delayed_task(r.task_id)``: an id is enough (queue: ``default_queue`` unless
    given), and any task not started yet is canceled, waiting for its ETA or not."""
    delayed = await app.send_task(Signature("stamp", args=["by-id"], eta=in_ms(60_000)))
    queued = await app.send_task(Signature("stamp", args=["queued"]))  # no ETA, no worker yet
    elsewhere = await app.send_task(Signature("stamp", args=["other"], routing_key="other"))
    assert await app.cancel_delayed_task(delayed.task_id) is True
    assert await app.cancel_delayed_task(queued.task_id) is True
    assert await app.cancel_delayed_task(elsewhere.task_id, queue="other") is True
    for r in (delayed, queued, elsewhere):
        assert await state_of(r) is State.CANCELED
    async with running_worker(app, 5), running_worker(app, 5, queue="other"):
        await canary_after(app, rc_text, in_ms(0))
    assert [await marks.runs(tag) for tag in ("by-id", "queued", "other")] == [0, 0, 0]
    with pytest.raises(ValueError, match="task id"):
        await app.cancel_delayed_task("not an id")


async def test_cancel_after_the_task_ran_keeps_its_result(
    app: Server, rc_text: aioredis.Redis
) -> None:
    """API: cancel_delayed_task "returns False if a worker had already started it". A task that
    has finished was started: the cancel must say so and must not rewrite its SUCCESS."""
    sig = Signature("stamp", args=["done-first"])
    async with running_worker(app, 5):
        r = await app.send_task(sig)
        value = await r.get(timeout=5)
        await wait_idle(rc_text, app)
    assert await app.cancel_delayed_task(sig) is False
    assert await state_of(r) is State.SUCCESS
    assert await r.get(timeout=1) == value


async def test_cancel_of_a_running_task_that_then_retries_leaves_a_final_state(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """A cancel that comes while the task runs returns False ("too late"). If the task then asks
    for a retry, the retry either runs (the cancel was too late) or is canceled -- but the task
    must reach a final state: a waiter must not hang on RETRY forever."""
    sig = Signature("slow_then_retry", args=["running"])
    async with running_worker(app, 5):
        r = await app.send_task(sig)

        async def running() -> bool:
            return int(await rc_text.hget(marks.key("attempts"), "running") or 0) >= 1

        await eventually(running)
        assert await app.cancel_delayed_task(sig) is False
        try:
            assert await r.get(timeout=5) == "running"
        except TaskCanceled:
            assert await marks.runs("running") == 0
        await wait_idle(rc_text, app)
    assert await state_of(r) in (State.SUCCESS, State.CANCELED)


async def test_cancel_delayed_group(app: Server, rc_text: aioredis.Redis, marks: Marks) -> None:
    eta = in_ms(0.6)
    group = Group(*[Signature("stamp", args=[f"g{i}"], eta=eta) for i in range(3)])
    async with running_worker(app, 5):
        results = await app.send_group(group)
        assert await app.cancel_delayed_group(group) is True
        for r in results:
            with pytest.raises(TaskCanceled):
                await r.get(timeout=2)
        await canary_after(app, rc_text, eta)
    assert [await marks.runs(f"g{i}") for i in range(3)] == [0, 0, 0]


async def test_cancel_delayed_chain_runs_no_link(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    eta = in_ms(0.6)
    chain = Chain(
        Signature("stamp", args=["c0"], eta=eta),
        Signature("stamp", args=["c1"]),
        Signature("stamp", args=["c2"]),
    )
    async with running_worker(app, 5):
        ch = await app.send_chain(chain)
        assert await app.cancel_delayed_chain(chain) is True
        with pytest.raises(TaskCanceled):
            await ch.get(timeout=2)
        assert [await state_of(r) for r in ch.results] == [State.CANCELED] * 3
        await canary_after(app, rc_text, eta)
    assert [await marks.runs(f"c{i}") for i in range(3)] == [0, 0, 0]


async def test_cancel_delayed_chord_runs_no_member_nor_callback(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    eta = in_ms(0.6)
    members = [Signature("stamp", args=[f"m{i}"], eta=eta) for i in range(2)]
    chord = Chord(Group(*members), Signature("stamp", args=["cb"]))
    async with running_worker(app, 5):
        cr = await app.send_chord(chord)
        assert await app.cancel_delayed_chord(chord) is True
        with pytest.raises(TaskCanceled):
            await cr.get(timeout=2)
        for r in cr.group_results:
            with pytest.raises(TaskCanceled):
                await r.get(timeout=2)
        await canary_after(app, rc_text, eta)
    assert [await marks.runs(t) for t in ("m0", "m1", "cb")] == [0, 0, 0]


async def test_cancel_racing_with_promotion(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """10,000 entries due at the same instant; half of them canceled from just before that
    instant on, while the scheduler promotes them and a worker runs them. A cancel that returned
    True means "never runs"; every other task runs exactly once."""
    n, lead = 10_000, 2.5
    eta = in_ms(lead)
    sigs = [Signature("record", args=[i], eta=eta) for i in range(n)]
    for start in range(0, n, 2500):
        await app.send_tasks(sigs[start : start + 2500])
    assert _wall() < eta.timestamp() - 0.3, "sending took too long for the scenario"
    assert await rc_text.zcard(app.keys.queue(QUEUE).delayed) == n
    to_cancel = sigs[::2]
    random.Random(20240601).shuffle(to_cancel)  # a cancel may come before or after its task ran
    flags: dict[int, bool] = {}
    cancel_sent: dict[int, float] = {}

    async def cancel(chunk: list[Signature]) -> None:
        for sig in chunk:
            cancel_sent[int(sig.args[0])] = _wall()
            flags[int(sig.args[0])] = await app.cancel_delayed_task(sig)

    async def ran() -> dict[int, int]:
        raw = await rc_text.hgetall(marks.key("race"))
        return {int(k): int(v) for k, v in raw.items()}

    # the worker and its scheduler on a Server of their own (own pool), like another process
    async with Server(app.config) as runner:
        register(runner, marks)
        async with runner.scheduler() as sched, running_worker(runner, 100, scheduler=False):
            await wait_redis_time(rc_text, ms(eta) - 20)
            async with anyio.create_task_group() as tg:
                for k in range(40):
                    tg.start_soon(cancel, to_cancel[k::40])
            canceled = {i for i, ok in flags.items() if ok}
            live = set(range(n)) - canceled

            async def live_ran() -> bool:
                return len(await ran()) >= len(live)

            await eventually(live_ran, timeout=60)
            # settle: the queue idle, one more full scheduler pass, and still idle
            await wait_idle(rc_text, app)
            await wait_pass(sched, sched.passes + 1)
            await wait_idle(rc_text, app)
    runs = await ran()
    print(
        f"cancels: {len(canceled)} won, {len(to_cancel) - len(canceled)} too late (running); "
        f"{len(runs)} tasks ran"
    )
    assert len(flags) == len(to_cancel)
    assert canceled, "no cancel won the race: the scenario did not race"
    ran_canceled = sorted(set(runs) & canceled)
    if ran_canceled:
        ran_at = {
            int(k): float(v) for k, v in (await rc_text.hgetall(marks.key("race-at"))).items()
        }
        before = [i for i in ran_canceled if ran_at[i] < cancel_sent[i]]
        states = [await app.result(sigs[i].id or "").get_state() for i in ran_canceled[:20]]
        raise AssertionError(
            f"{len(ran_canceled)} tasks ran although their cancel returned True "
            f"(e.g. {ran_canceled[:5]}); {len(before)} of them had started before the cancel "
            f"was sent; their states now: {sorted({str(s and s.state) for s in states})}"
        )
    assert set(runs) == live
    assert [i for i, c in runs.items() if c != 1] == [], "a task ran more than once"


# -- the scheduler -------------------------------------------------------------------------------


async def test_scheduler_is_woken_not_polling(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """With a 30 s poll period, a task due in 0.3 s still runs on time: the enqueue woke the
    sleeping scheduler through pub/sub."""
    async with Server(tuned(config, delayed_tasks_poll_period=30_000)) as srv:
        register(srv, marks)
        async with srv.scheduler() as sched, running_worker(srv, 5, scheduler=False):
            await wait_listening(rc_text, srv)
            await wait_pass(sched, 0)
            sent = _wall()
            r = await srv.send_task(Signature("stamp", args=["woken"], eta=in_ms(0.3)))
            started = await r.get(timeout=5)
    assert 0.29 <= started - sent < 0.5, f"ran {started - sent:.3f}s after it was sent"


async def test_earlier_entry_wakes_a_scheduler_sleeping_for_a_later_one(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    async with Server(tuned(config, delayed_tasks_poll_period=30_000)) as srv:
        register(srv, marks)
        async with srv.scheduler() as sched, running_worker(srv, 5, scheduler=False):
            await wait_listening(rc_text, srv)
            await wait_pass(sched, 0)
            far = Signature("stamp", args=["far"], eta=in_ms(20))
            passes = sched.passes
            await srv.send_task(far)
            await wait_pass(sched, passes)  # woken by `far`; now sleeping ~20 s for it
            sent = _wall()
            r = await srv.send_task(Signature("stamp", args=["near"], eta=in_ms(0.3)))
            started = await r.get(timeout=5)
            assert 0.29 <= started - sent < 0.5, f"ran {started - sent:.3f}s after it was sent"
            assert await delayed_ids(srv) == [far.id]
            assert await srv.cancel_delayed_task(far) is True
    assert await marks.runs("far") == 0


async def test_delayed_scores_are_on_redis_time(app: Server, rc_text: aioredis.Redis) -> None:
    r = await app.send_task(Signature("stamp", args=["clock"], eta=in_ms(10)))
    score = await rc_text.zscore(app.keys.queue(QUEUE).delayed, r.task_id)
    assert score is not None
    assert abs(score - await redis_ms(rc_text) - 10_000) < 500
    # a retry's due time is computed inside Redis, from TIME
    async with running_worker(app, 5):
        retry = await app.send_task(Signature("later_once", args=["clock-retry"]))

        async def retrying() -> float | None:
            return await rc_text.zscore(app.keys.queue(QUEUE).delayed, retry.task_id)

        due = await eventually(retrying)
        assert due is not None
        ahead = due - await redis_ms(rc_text)
        assert 500 < ahead <= 1000, ahead
        assert await retry.get(timeout=5) == "clock-retry"
    assert await app.cancel_delayed_task(Signature("stamp", id=r.task_id)) is True


@pytest.mark.redis_only(
    "it moves this process's clock away from Redis's; memory:// has no other clock (its TIME "
    "is this process's time.time)"
)
async def test_scheduler_promotes_by_redis_clock_not_the_local_one(
    app: Server, marks: Marks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local clock jumps an hour ahead after the send: a scheduler trusting it would promote
    the task at once; it must still wait for the ETA by Redis's clock."""
    eta = in_ms(0.8)
    r = await app.send_task(Signature("stamp", args=["skewed"], eta=eta))
    monkeypatch.setattr(time, "time", lambda: _wall() + 3600)
    async with running_worker(app, 5):
        started = await r.get(timeout=5)
    assert 0 <= started - eta.timestamp() < 0.3


@pytest.mark.parametrize("task", ["fail_once", "later_once"])
async def test_retry_backoff_goes_through_the_delayed_set(
    app: Server, rc_text: aioredis.Redis, task: str
) -> None:
    """A retry (failure with retry_count, or RetryTaskLater) waits in the delayed set, listed by
    get_delayed_tasks with state RETRY, then runs again."""
    sig = Signature(task, args=[task], retry_count=1)
    async with running_worker(app, 5):
        r = await app.send_task(sig)

        async def waiting() -> bool:
            return await delayed_ids(app) == [sig.id]

        await eventually(waiting)
        state = await r.get_state()
        assert state is not None
        assert state.state is State.RETRY
        assert "first attempt fails" in state.error or "not yet" in state.error
        (listed,) = await app.get_broker().get_delayed_tasks(QUEUE)
        assert (listed.name, listed.args) == (task, [task])
        assert await r.get(timeout=5) == task
    assert await delayed_ids(app) == []
