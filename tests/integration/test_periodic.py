"""Periodic tasks, groups, chains and chords: firing, canceling, several schedulers, restarts,
missed ticks, the embedded scheduler and time zones.

Tasks are defined here; ``tick`` records the wall-clock time it started (and its args) in a Redis
list per label under ``<key prefix>:pd:``. Fire times are whole seconds, so the second an execution
started in (``int(t)``) is the tick it belongs to as long as it starts within the second -- the
tests check that too. Synchronisation is by polling Redis or the scheduler's pass counter with
deadlines; the fixed observation windows ("watch 5 s of ticks") are the scenarios themselves.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker
from vecna_async import (
    Chain,
    Chord,
    Config,
    Group,
    InvalidCronSpec,
    Server,
    Signature,
    State,
)
from vecna_async.scheduler.scheduler import Scheduler

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"
EVERY_SECOND = "* * * * * *"


# -- tasks ---------------------------------------------------------------------------------------


class Marks:
    def __init__(self, rc_text: aioredis.Redis, prefix: str) -> None:
        self.rc_text = rc_text
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:pd:{name}"

    async def ticks(self, label: str) -> list[tuple[float, list[Any]]]:
        """(start time, extra args) of every execution of ``tick(label, ...)``, in order."""
        raw = await self.rc_text.lrange(self.key(f"ticks:{label}"), 0, -1)
        return [(float(t), rest) for t, rest in (json.loads(x) for x in raw)]

    async def times(self, label: str) -> list[float]:
        return [t for t, _ in await self.ticks(label)]


def register(server: Server, marks: Marks) -> None:
    rc_text = marks.rc_text

    async def tick(label: str, *rest: Any) -> float:
        now = time.time()
        await rc_text.rpush(marks.key(f"ticks:{label}"), json.dumps([now, list(rest)]))
        return now

    async def add(*numbers: int) -> int:
        return sum(numbers)

    server.register_tasks({"tick": tick, "add": add})


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def marks(rc_text: aioredis.Redis, config: Config) -> Marks:
    return Marks(rc_text, config.redis.key_prefix)


@pytest.fixture
def app(server: Server, marks: Marks) -> Server:
    register(server, marks)
    return server


async def redis_ms(rc_text: aioredis.Redis) -> int:
    seconds, micros = await rc_text.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def stored_periodic(rc_text: aioredis.Redis, server: Server) -> tuple[int, int]:
    """(definitions, scheduled fire times) stored in Redis."""
    return int(await rc_text.hlen(server.keys.periodic_defs)), int(
        await rc_text.zcard(server.keys.periodic_next)
    )


async def wait_idle(rc_text: aioredis.Redis, server: Server, timeout: float = 10.0) -> None:
    q = server.keys.queue(QUEUE)

    async def idle() -> bool:
        counts = [await rc_text.zcard(k) for k in (q.ready, q.delayed, q.leases)]
        return not any(counts) and not await rc_text.scard(q.parked)

    await eventually(idle, timeout=timeout)


async def wait_pass(sched: Scheduler, after: int) -> None:
    async def passed() -> bool:
        return sched.passes > after

    await eventually(passed)


async def wait_listening(rc_text: aioredis.Redis, server: Server, n: int) -> None:
    async def subscribed() -> bool:
        reply = await rc_text.pubsub_numsub(server.keys.sched_channel)
        return int(reply[0][1]) >= n

    await eventually(subscribed)


async def count_at_least(marks: Marks, labels: list[str], n: int, timeout: float = 10) -> None:
    async def enough() -> bool:
        counts = [len(await marks.ticks(label)) for label in labels]
        return min(counts) >= n

    await eventually(enough, timeout=timeout)


def per_second(times: list[float]) -> Counter[int]:
    return Counter(int(t) for t in times)


# -- each kind fires and stops -------------------------------------------------------------------


async def _send_kind(server: Server, kind: str) -> tuple[str, str, list[str], list[Any]]:
    """Send a periodic ``kind``; returns (code, the code the seed says to save, the labels
    that record a firing, the extra args each of them gets)."""
    if kind == "task":
        sig = Signature("tick", args=["task"])
        code = await server.send_periodic_task(EVERY_SECOND, sig)
        assert sig.code is not None
        return code, sig.code, ["task"], []
    if kind == "group":
        group = Group(Signature("tick", args=["g0"]), Signature("tick", args=["g1"]))
        code = await server.send_periodic_group(EVERY_SECOND, group)
        assert group.tasks[0].code == group.group_id
        return code, group.group_id, ["g0", "g1"], []
    if kind == "chain":
        chain = Chain(Signature("add", args=[1, 1]), Signature("tick", args=["chain"]))
        code = await server.send_periodic_chain(EVERY_SECOND, chain)
        assert chain.tasks[0].code is not None
        return code, chain.tasks[0].code, ["chain"], [2]
    group = Group(Signature("add", args=[1, 1]), Signature("add", args=[5, 5]))
    chord = Chord(group, Signature("tick", args=["chord"]))
    code = await server.send_periodic_chord(EVERY_SECOND, chord)
    assert chord.group.tasks[0].code == chord.group.group_id
    return code, chord.group.group_id, ["chord"], [2, 10]


@pytest.mark.parametrize("kind", ["task", "group", "chain", "chord"])
async def test_periodic_kind_fires_then_cancel_stops_it(
    app: Server, rc_text: aioredis.Redis, marks: Marks, kind: str
) -> None:
    async with app.scheduler() as sched, running_worker(app, 10, scheduler=False):
        code, expected_code, labels, extra = await _send_kind(app, kind)
        assert code == expected_code
        assert await stored_periodic(rc_text, app) == (1, 1)
        await count_at_least(marks, labels, 2, timeout=6)

        assert await app.cancel_periodic_task(code) is True
        assert await stored_periodic(rc_text, app) == (0, 0)
        # a tick being fired during the cancel may still run: let the scheduler finish a whole
        # pass begun after the cancel and the queue drain, then count
        await wait_pass(sched, sched.passes + 1)
        await wait_idle(rc_text, app)
        before = {label: len(await marks.ticks(label)) for label in labels}
        await anyio.sleep(2.5)  # the scenario: 2 more ticks would have fired
        await wait_idle(rc_text, app)
        after = {label: len(await marks.ticks(label)) for label in labels}
    assert after == before, "a tick fired after cancel_periodic_task"
    for label in labels:
        fired = await marks.ticks(label)
        assert all(rest == extra for _, rest in fired), fired
        assert max(per_second([t for t, _ in fired]).values()) == 1
    assert await app.cancel_periodic_task(code) is False


# -- bad specs and zones -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["* * *", "61 * * * *", "*/0 * * * * *", "0 6 * * xyz", "", "@every_5s", "0 0 30 2 *"],
)
async def test_bad_spec_raises_naming_it_and_stores_nothing(
    app: Server, rc_text: aioredis.Redis, spec: str
) -> None:
    sends: dict[str, Callable[[], Awaitable[str]]] = {
        "task": lambda: app.send_periodic_task(spec, Signature("tick", args=["x"])),
        "group": lambda: app.send_periodic_group(spec, Group(Signature("tick", args=["x"]))),
        "chain": lambda: app.send_periodic_chain(spec, Chain(Signature("tick", args=["x"]))),
        "chord": lambda: app.send_periodic_chord(
            spec, Chord(Group(Signature("add", args=[1])), Signature("tick", args=["x"]))
        ),
    }
    for kind, send in sends.items():
        with pytest.raises(ValueError, match="invalid cron spec") as excinfo:
            await send()
        assert isinstance(excinfo.value, InvalidCronSpec), kind
        assert repr(spec.strip()) in str(excinfo.value), kind
    assert await stored_periodic(rc_text, app) == (0, 0)


async def test_time_zone_is_stored_and_used(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    paris = ZoneInfo("Europe/Paris")
    sig = Signature("tick", args=["six"])
    code = await app.send_periodic_task("0 6 * * *", sig, tz="Europe/Paris")
    stored = await rc_text.hget(app.keys.periodic_defs, code)
    assert stored is not None
    definition = json.loads(stored)
    assert (definition["spec"], definition["tz"]) == ("0 6 * * *", "Europe/Paris")
    # the first fire time is the next 06:00 in Paris (not 06:00 UTC)
    now = datetime.fromtimestamp(await redis_ms(rc_text) / 1000, paris)
    six = now.replace(hour=6, minute=0, second=0, microsecond=0)
    if six <= now:
        six = (six + timedelta(days=1)).replace(hour=6)
    assert await rc_text.zscore(app.keys.periodic_next, code) == six.timestamp() * 1000
    assert await app.cancel_periodic_task(code) is True

    every = await app.send_periodic_task(
        EVERY_SECOND, Signature("tick", args=["paris"]), tz="Europe/Paris"
    )
    async with running_worker(app, 5):
        await count_at_least(marks, ["paris"], 1, timeout=4)
    assert await app.cancel_periodic_task(every) is True

    with pytest.raises(ValueError, match="Mars/Olympus_Mons") as excinfo:
        await app.send_periodic_task("0 6 * * *", sig, tz="Mars/Olympus_Mons")
    assert isinstance(excinfo.value, InvalidCronSpec)
    assert await stored_periodic(rc_text, app) == (0, 0)


# -- several schedulers, restarts, downtime ------------------------------------------------------


async def test_three_schedulers_fire_each_tick_exactly_once(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """Three schedulers (three Servers) on one Redis, plus a worker without a scheduler; 5 s of
    ``*/1 * * * * *``: one execution per second, never two."""
    async with AsyncExitStack() as stack:
        servers: list[Server] = []
        for _ in range(4):
            srv = await stack.enter_async_context(Server(config))
            register(srv, marks)
            servers.append(srv)
        await stack.enter_async_context(running_worker(servers[3], 10, scheduler=False))
        for srv in servers[:3]:
            await stack.enter_async_context(srv.scheduler())
        await wait_listening(rc_text, servers[0], 3)

        code = await servers[3].send_periodic_task("*/1 * * * * *", Signature("tick", args=["x3"]))
        await count_at_least(marks, ["x3"], 1, timeout=4)
        first = int((await marks.times("x3"))[0])
        await anyio.sleep(first + 5.5 - time.time())  # the scenario: seconds first .. first+5
        assert await servers[3].cancel_periodic_task(code) is True
        await wait_idle(rc_text, servers[3])
    times = await marks.times("x3")
    seconds = per_second(times)
    window = {s: n for s, n in seconds.items() if first <= s < first + 5}
    assert window == dict.fromkeys(range(first, first + 5), 1), f"per second: {seconds}"
    assert max(seconds.values()) == 1, f"a tick fired twice: {seconds}"
    assert 5 <= len(times) <= 7, times
    assert all(t - int(t) < 0.5 for t in times), f"late executions: {times}"


async def test_periodic_fires_after_restart_without_reregistration(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    async with Server(config) as first:
        code = await first.send_periodic_task(EVERY_SECOND, Signature("tick", args=["restart"]))
    # a new Server that never calls send_periodic_*: it only knows the task functions
    async with Server(config) as second:
        register(second, marks)
        async with running_worker(second, 5):  # with the worker's own scheduler
            await count_at_least(marks, ["restart"], 2, timeout=5)
        assert await second.cancel_periodic_task(code) is True


async def test_missed_ticks_fire_once_not_as_a_burst(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    async with Server(config) as srv:
        register(srv, marks)
        code = await srv.send_periodic_task(EVERY_SECOND, Signature("tick", args=["missed"]))
        await anyio.sleep(3.2)  # the scenario: ~3 ticks pass with no scheduler running
        assert await marks.ticks("missed") == []
        async with running_worker(srv, 5, scheduler=False):
            started = time.time()
            async with srv.scheduler():
                await count_at_least(marks, ["missed"], 1, timeout=3)
                await anyio.sleep(3.0)  # the scenario: 3 s of normal ticks
                assert await srv.cancel_periodic_task(code) is True
            await wait_idle(rc_text, srv)
    times = await marks.times("missed")
    assert times[0] - started < 0.5, "the missed tick fires as soon as a scheduler runs"
    assert max(per_second(times).values()) == 1, f"a burst: {times}"
    # one firing for the whole downtime, then one per second
    assert 3 <= len(times) <= 5, times
    catch_up = [t for t in times if t < int(started) + 1]
    assert len(catch_up) <= 1, times


# -- the embedded scheduler ----------------------------------------------------------------------


async def test_embedded_scheduler_promotes_delayed_tasks(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    eta = datetime.fromtimestamp((await redis_ms(rc_text) + 300) / 1000).astimezone()
    async with running_worker(app, 5, scheduler=False):
        r = await app.send_task(Signature("tick", args=["embedded"], eta=eta))
        due_ms = round(eta.timestamp() * 1000)

        async def well_past_due() -> bool:
            return await redis_ms(rc_text) > due_ms + 500

        await eventually(well_past_due)
        # no scheduler anywhere: past its ETA it is still waiting
        assert [s.id for s in await app.get_broker().get_delayed_tasks(QUEUE)] == [r.task_id]
        state = await r.get_state()
        assert state is not None
        assert state.state is State.PENDING
        async with app.scheduler():
            await r.get(timeout=3)
    assert len(await marks.ticks("embedded")) == 1
