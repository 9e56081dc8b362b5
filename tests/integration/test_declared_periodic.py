"""Schedules declared in code (``@server.periodic``) and replaced by code
(``send_periodic_task`` with a set ``code`` or ``id``): written when a worker or an embedded
scheduler starts, one definition however many processes declare it, and a re-declaration (a
restart) neither fires the due tick twice nor skips it.

Ticks are recorded by ``tick`` in a Redis list per label; most tests drive the scheduler a pass at
a time (``Scheduler.run_once``) against a schedule made due by hand, so nothing depends on timing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker
from vecna_async import Config, InvalidCronSpec, Server, Signature

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"
DAILY = "0 6 * * *"


def key(server: Server, label: str) -> str:
    return f"{server.keys.prefix}:decl:{label}"


def declare(server: Server, rc_text: aioredis.Redis, spec: str = DAILY, **kw: str) -> None:
    """A Server of one "process": the ``report`` task, declared on ``spec``."""

    @server.periodic(spec, name="report", **kw)
    async def report() -> None:
        await rc_text.rpush(key(server, "report"), json.dumps(time.time()))


async def ticks(server: Server, rc_text: aioredis.Redis, label: str = "report") -> list[float]:
    return [json.loads(x) for x in await rc_text.lrange(key(server, label), 0, -1)]


async def redis_ms(rc_text: aioredis.Redis) -> int:
    seconds, micros = await rc_text.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def next_fire(rc_text: aioredis.Redis, server: Server, code: str) -> float | None:
    score: float | None = await rc_text.zscore(server.keys.periodic_next, code)
    return score


async def definitions(rc_text: aioredis.Redis, server: Server) -> int:
    return int(await rc_text.hlen(server.keys.periodic_defs))


async def started(server: Server, rc_text: aioredis.Redis, code: str = "report") -> bool:
    return await next_fire(rc_text, server, code) is not None


async def rewritten(server: Server, rc_text: aioredis.Redis, before: bytes | str | None) -> None:
    """Wait until a start wrote the definition again (each write has a fresh template id)."""

    async def changed() -> bool:
        return await rc_text.hget(server.keys.periodic_defs, "report") not in (None, before)

    await eventually(changed)


async def stored(server: Server, rc_text: aioredis.Redis) -> bytes | str | None:
    return await rc_text.hget(server.keys.periodic_defs, "report")


async def idle(rc_text: aioredis.Redis, server: Server) -> None:
    q = server.keys.queue(QUEUE)

    async def empty() -> bool:
        return not any([await rc_text.zcard(k) for k in (q.ready, q.delayed, q.leases)])

    await eventually(empty)


# -- declaring -------------------------------------------------------------------------------------


@pytest.mark.no_backend("the decorator's checks at import")
def test_a_declaration_is_checked_at_import() -> None:
    server = Server(Config())
    with pytest.raises(InvalidCronSpec, match="'61 \\* \\* \\* \\*'"):

        @server.periodic("61 * * * *")
        async def bad() -> None: ...

    with pytest.raises(InvalidCronSpec, match="Mars/Olympus_Mons"):

        @server.periodic(DAILY, tz="Mars/Olympus_Mons")
        async def bad_zone() -> None: ...

    @server.periodic(DAILY, name="one")
    async def one() -> None: ...

    with pytest.raises(ValueError, match="periodic code 'one' is already declared"):

        @server.periodic("0 7 * * *", name="two", code="one")
        async def two() -> None: ...

    with pytest.raises(TypeError, match="unknown option 'timeout_s'"):

        @server.periodic(DAILY, name="three", timeout_s=5)
        async def three() -> None: ...

    assert [(d.code, d.spec, d.tz, d.task) for d in server.declared] == [
        ("one", DAILY, "UTC", "one")
    ]
    assert "one" in server.registry  # a periodic task is a task: send it by hand too


async def test_a_worker_writes_the_declared_schedule_before_claiming(
    config: Config, rc_text: aioredis.Redis
) -> None:
    async with Server(config) as server:
        declare(server, rc_text, tz="Europe/Paris", code="morning-report")
        async with running_worker(server, 5, scheduler=False):
            await eventually(lambda: started(server, rc_text, "morning-report"))
        stored = await server.new_scheduler().periodic.definitions()
    assert list(stored) == ["morning-report"]
    d = stored["morning-report"]
    assert (d.spec, d.tz, d.kind, [t.name for t in d.tasks]) == (
        DAILY, "Europe/Paris", "task", ["report"]
    )  # fmt: skip
    paris = ZoneInfo("Europe/Paris")
    now = datetime.now(paris)
    six = now.replace(hour=6, minute=0, second=0, microsecond=0)
    if six <= now:
        six = (six + timedelta(days=1)).replace(hour=6)
    assert await next_fire(rc_text, server, "morning-report") == six.timestamp() * 1000


async def test_restarts_neither_fire_the_due_tick_twice_nor_skip_it(
    config: Config, rc_text: aioredis.Redis
) -> None:
    """Three "processes" declaring the same schedule start one after another; between the first
    and the second, the 06:00 tick came while no scheduler ran."""
    async with Server(config) as first:
        declare(first, rc_text)
        async with running_worker(first, 5, scheduler=False):
            await eventually(lambda: started(first, rc_text))
    due = await redis_ms(rc_text) - 1000
    await rc_text.zadd(first.keys.periodic_next, {"report": due})

    async with Server(config) as second:  # a restart: the schedule is declared again
        declare(second, rc_text)
        before = await stored(second, rc_text)
        async with running_worker(second, 5, scheduler=False):
            await rewritten(second, rc_text, before)
            assert await next_fire(rc_text, second, "report") == due, "the due tick was skipped"
            await second.new_scheduler().run_once()
            await eventually(lambda: ticks(second, rc_text))
            after_tick = await next_fire(rc_text, second, "report")
            assert after_tick is not None
            assert after_tick > due
    async with Server(config) as third:  # another restart, after the tick fired
        declare(third, rc_text)
        before = await stored(third, rc_text)
        async with running_worker(third, 5, scheduler=False):
            await rewritten(third, rc_text, before)
            assert await next_fire(rc_text, third, "report") == after_tick
            await third.new_scheduler().run_once()
            await idle(rc_text, third)
        assert len(await ticks(third, rc_text)) == 1, "the tick fired twice"
        assert await definitions(rc_text, third) == 1


async def test_a_changed_spec_is_rescheduled(config: Config, rc_text: aioredis.Redis) -> None:
    async with Server(config) as old:
        declare(old, rc_text)
        await old.write_declared_schedules()
        await rc_text.zadd(old.keys.periodic_next, {"report": await redis_ms(rc_text) - 1000})
    async with Server(config) as new:
        declare(new, rc_text, spec="30 7 * * *")
        await new.write_declared_schedules()
        now = datetime.fromtimestamp(await redis_ms(rc_text) / 1000).astimezone(ZoneInfo("UTC"))
        seven = now.replace(hour=7, minute=30, second=0, microsecond=0)
        if seven <= now:
            seven += timedelta(days=1)
        assert await next_fire(rc_text, new, "report") == seven.timestamp() * 1000
        assert (await new.new_scheduler().periodic.definitions())["report"].spec == "30 7 * * *"


async def test_a_redis_that_lost_its_data_gets_the_schedule_back_at_the_next_start(
    config: Config, rc_text: aioredis.Redis
) -> None:
    async with Server(config) as server:
        declare(server, rc_text)
        async with running_worker(server, 5, scheduler=False):
            await eventually(lambda: started(server, rc_text))
        await rc_text.flushall()  # Redis restarted without persistence
        assert await definitions(rc_text, server) == 0
        async with running_worker(server, 5, scheduler=False):
            await eventually(lambda: started(server, rc_text))
        assert await definitions(rc_text, server) == 1


async def test_the_embedded_scheduler_writes_and_fires_the_declared_schedule(
    config: Config, rc_text: aioredis.Redis
) -> None:
    async with Server(config) as server:
        declare(server, rc_text, spec="* * * * * *")
        async with running_worker(server, 5, scheduler=False), server.scheduler():
            await eventually(lambda: started(server, rc_text))
            await eventually(lambda: ticks(server, rc_text))
        assert await definitions(rc_text, server) == 1
        assert await server.cancel_periodic_task("report") is True


async def test_every_process_declaring_it_and_restarting_runs_each_tick_once(
    config: Config, rc_text: aioredis.Redis
) -> None:
    """Every second, declared by three worker processes (Servers) started and stopped in turn:
    one definition, and no more runs than ticks (with a new definition per start, as
    ``send_periodic_task`` made before, each start would add one run per tick)."""
    async with Server(config) as a, Server(config) as b, Server(config) as c:
        for server in (a, b, c):
            declare(server, rc_text, spec="* * * * * *")
        for server in (a, b, c, a):
            async with running_worker(server, 5):
                count = len(await ticks(server, rc_text))

                async def one_more(s: Server = server, n: int = count) -> bool:
                    return len(await ticks(s, rc_text)) > n

                await eventually(one_more, timeout=5)  # a tick while this one runs
            assert await definitions(rc_text, server) == 1
        assert await a.cancel_periodic_task("report") is True
        await idle(rc_text, a)
    times = await ticks(a, rc_text)
    seconds = Counter(int(t) for t in times)
    assert len(times) >= 4
    assert len(times) <= max(times) - min(times) + 2, f"more runs than ticks: {seconds}"


# -- send_periodic_task with a code replaces -------------------------------------------------------


async def test_send_periodic_task_with_a_code_or_id_replaces(
    server: Server, rc_text: aioredis.Redis
) -> None:
    for _ in range(3):  # an app sending its schedule at every start
        code = await server.send_periodic_task(DAILY, Signature("report", code="nightly"))
        assert code == "nightly"
    for _ in range(2):
        code = await server.send_periodic_task(DAILY, Signature("report", id="by-id"))
        assert code == "by-id"
    assert await definitions(rc_text, server) == 2
    due = await redis_ms(rc_text) - 1000
    await rc_text.zadd(server.keys.periodic_next, {"nightly": due})
    await server.send_periodic_task(DAILY, Signature("report", args=[1], code="nightly"))
    assert await next_fire(rc_text, server, "nightly") == due  # unchanged spec: same next tick
    (d,) = [
        d
        for c, d in (await server.new_scheduler().periodic.definitions()).items()
        if c == "nightly"
    ]
    assert d.tasks[0].args == [1]  # the rest of the definition is replaced
