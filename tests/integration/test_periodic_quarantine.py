"""Periodic definitions no scheduler can fire (not JSON, an unknown format version, firings over
``max_message_bytes``, a hand-edited invalid spec): each is moved aside once into the quarantine
hash with why, logged once however many schedulers meet it, and everything else keeps being
scheduled -- in the same pass. Redis being unreachable or refusing writes quarantines nothing.

A bad definition is made by sending a good one and spoiling its stored JSON, as a hand edit with
``redis-cli`` would. Synchronisation is by polling with deadlines or by driving ``run_once``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import Config, RedisConfig, Server, Signature
from vecna_async.scheduler.scheduler import Scheduler
from vecna_async.scripts import script

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"
EVERY_SECOND = "* * * * * *"
SMALL = 4096  # the schedulers' max_message_bytes: the "oversized" firing is over it
LOGGER = "vecna_async"


# -- how to spoil a stored definition, and a word its quarantine reason must contain -------------


def _not_json(d: dict[str, Any]) -> bytes:
    return b"\xff{ this is not JSON"


def _unknown_version(d: dict[str, Any]) -> bytes:
    return json.dumps({**d, "v": 99}).encode()


def _oversized(d: dict[str, Any]) -> bytes:
    d["tasks"][0]["args"] = ["x" * (2 * SMALL)]
    return json.dumps(d).encode()


def _invalid_spec(d: dict[str, Any]) -> bytes:
    return json.dumps({**d, "spec": "61 * * * *"}).encode()


CASES: dict[str, tuple[Callable[[dict[str, Any]], bytes], str]] = {
    "not-json": (_not_json, "malformed"),
    "unknown-version": (_unknown_version, "format version 99"),
    "oversized": (_oversized, "max_message_bytes"),
    "invalid-spec": (_invalid_spec, "'61 * * * *'"),
}


# -- helpers -------------------------------------------------------------------------------------


def register(server: Server, rc_text: aioredis.Redis) -> None:
    prefix = server.config.redis.key_prefix

    async def mark(label: str) -> None:
        await rc_text.rpush(f"{prefix}:pq:{label}", "1")

    server.register_task("mark", mark)


async def marked(rc_text: aioredis.Redis, server: Server, label: str) -> int:
    return int(await rc_text.llen(f"{server.config.redis.key_prefix}:pq:{label}"))


async def redis_ms(rc: aioredis.Redis) -> int:
    seconds, micros = await rc.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def spoiled(server: Server, rc: aioredis.Redis, case: str, due_ms: int) -> tuple[str, bytes]:
    """Send a periodic task, then overwrite its stored definition the way ``case`` says and make
    it due at ``due_ms``; returns (its code, the bad bytes stored)."""
    code = await server.send_periodic_task(EVERY_SECOND, Signature("mark", args=["bad"]))
    stored = await rc.hget(server.keys.periodic_defs, code)
    assert stored is not None
    bad = CASES[case][0](json.loads(stored))
    await rc.hset(server.keys.periodic_defs, code, bad)
    await rc.zadd(server.keys.periodic_next, {code: due_ms})
    return code, bad


def _with_error(record: logging.LogRecord) -> str:
    """The record's message and the text of the exception it carries."""
    exc = record.exc_info[1] if record.exc_info else None
    return f"{record.getMessage()} {type(exc).__name__}: {exc}"


def error_records(caplog: pytest.LogCaptureFixture, code: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and code in r.getMessage()]


def failed_passes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]


async def wait_pass(sched: Scheduler) -> None:
    """Until ``sched`` has begun a pass after this call and finished the one before it."""
    after = sched.passes + 1

    async def passed() -> bool:
        return sched.passes > after

    await eventually(passed)


# -- one bad definition among good work ----------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
async def test_one_pass_quarantines_fires_the_others_and_promotes(
    server: Server, config: Config, rc: aioredis.Redis, case: str
) -> None:
    """The first pass that meets the bad definition moves it aside, fires the good one due
    beside it and promotes the due delayed task: nothing waits for a later pass."""
    register(server, rc)
    now = await redis_ms(rc)
    code, bad = await spoiled(server, rc, case, now)
    good = await server.send_periodic_task(EVERY_SECOND, Signature("mark", args=["good"]))
    await rc.zadd(server.keys.periodic_next, {good: now})  # due in the same pass
    eta = datetime.fromtimestamp((now + 200) / 1000, UTC)
    delayed = await server.send_task(Signature("mark", args=["delayed"], eta=eta))
    q = server.keys.queue(QUEUE)

    async def past_eta() -> bool:
        return await redis_ms(rc) > now + 300

    await eventually(past_eta)
    async with Server(tuned(config, max_message_bytes=SMALL)) as small:
        sched = small.new_scheduler()
        await sched.run_once()
        assert await rc.zscore(q.delayed, delayed.task_id) is None, "the delayed task waits"
        assert await rc.zscore(q.ready, delayed.task_id) is not None
        assert sched.periodic.fired == 1, "the good definition did not fire"
        assert (await rc.zscore(server.keys.periodic_next, good) or 0) > now

        assert not await rc.hexists(server.keys.periodic_defs, code)
        assert await rc.zscore(server.keys.periodic_next, code) is None
        [entry] = await sched.periodic.quarantined()
        assert (entry.code, entry.raw) == (code, bad)
        assert CASES[case][1] in entry.reason, entry.reason
        assert now <= entry.quarantined_at_ms <= await redis_ms(rc)
        assert await rc.hexists(f"{config.redis.key_prefix}:{{periodic}}:bad", code)


@pytest.mark.parametrize("case", list(CASES))
async def test_two_schedulers_log_it_once_and_keep_everything_running(
    server: Server,
    config: Config,
    rc: aioredis.Redis,
    rc_text: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    register(server, rc_text)
    code, _ = await spoiled(server, rc, case, await redis_ms(rc))
    await server.send_periodic_task(EVERY_SECOND, Signature("mark", args=["good"]))
    eta = datetime.fromtimestamp((await redis_ms(rc) + 1000) / 1000, UTC)
    delayed = await server.send_task(Signature("mark", args=["delayed"], eta=eta))

    async with AsyncExitStack() as stack:
        await stack.enter_async_context(running_worker(server, 5, scheduler=False))
        scheds: list[Scheduler] = []
        for _ in range(2):
            small = await stack.enter_async_context(Server(tuned(config, max_message_bytes=SMALL)))
            scheds.append(await stack.enter_async_context(small.scheduler()))
        await delayed.get(timeout=10)

        async def fired_twice() -> bool:
            return await marked(rc_text, server, "good") >= 2

        await eventually(fired_twice, timeout=10)
        for sched in scheds:  # each had whole passes after the move: a chance to log it again
            await wait_pass(sched)
        assert [e.code for e in await scheds[0].periodic.quarantined()] == [code]

    assert len(error_records(caplog, code)) == 1, [r.getMessage() for r in caplog.records]
    assert failed_passes(caplog) == []
    assert await marked(rc_text, server, "bad") == 0


@pytest.mark.parametrize("case", list(CASES))
async def test_definitions_skips_a_bad_entry(
    server: Server, config: Config, rc: aioredis.Redis, case: str
) -> None:
    far = await redis_ms(rc) + 3_600_000  # not due: nothing moves it during the test
    code, _ = await spoiled(server, rc, case, far)
    good = await server.send_periodic_task(EVERY_SECOND, Signature("mark", args=["good"]))
    async with Server(tuned(config, max_message_bytes=SMALL)) as small:
        store = small.new_scheduler().periodic
        assert list(await store.definitions()) == [good]
        assert await store.quarantined() == []
    assert await rc.hexists(server.keys.periodic_defs, code)


async def test_only_one_of_two_racing_moves_it_and_a_replaced_one_stays(
    server: Server, rc: aioredis.Redis
) -> None:
    """The move is a compare-and-set on the bytes read: the second scheduler to meet the same bad
    definition moves (and so logs) nothing, and a definition re-sent meanwhile is kept."""
    code, bad = await spoiled(server, rc, "not-json", await redis_ms(rc))
    k = server.keys
    keys = [k.periodic_defs, k.periodic_next, k.periodic_bad]
    quarantine = script("periodic_quarantine")
    assert await quarantine(rc, keys, [code, bad, b'{"reason":"first"}']) == 1
    assert await quarantine(rc, keys, [code, bad, b'{"reason":"second"}']) == 0
    assert await rc.hget(k.periodic_bad, code) == b'{"reason":"first"}'

    other, stale = await spoiled(server, rc, "invalid-spec", await redis_ms(rc))
    resent = await server.send_periodic_task(EVERY_SECOND, Signature("mark", id=other, args=[1]))
    assert resent == other
    assert await quarantine(rc, keys, [other, stale, b"{}"]) == 0
    assert await rc.hexists(k.periodic_defs, other)
    assert not await rc.hexists(k.periodic_bad, other)


async def test_resend_or_cancel_clears_the_quarantine_record(
    server: Server, rc: aioredis.Redis
) -> None:
    register(server, rc)
    code, _ = await spoiled(server, rc, "unknown-version", await redis_ms(rc))
    sched = server.new_scheduler()
    await sched.run_once()
    assert [e.code for e in await sched.periodic.quarantined()] == [code]
    resent = await server.send_periodic_task(EVERY_SECOND, Signature("mark", id=code, args=["x"]))
    assert resent == code
    assert await sched.periodic.quarantined() == []
    assert code in await sched.periodic.definitions()

    other, _ = await spoiled(server, rc, "not-json", await redis_ms(rc))
    await sched.run_once()
    assert [e.code for e in await sched.periodic.quarantined()] == [other]
    assert await server.cancel_periodic_task(other) is True
    assert await sched.periodic.quarantined() == []
    assert await server.cancel_periodic_task(other) is False


# -- a failure in the periodic part never holds back delayed entries ------------------------------


async def test_run_once_promotes_even_when_the_periodic_part_fails(
    server: Server, rc: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    eta = datetime.fromtimestamp((await redis_ms(rc) + 100) / 1000, UTC)
    delayed = await server.send_task(Signature("mark", args=["delayed"], eta=eta))
    q = server.keys.queue(QUEUE)

    async def past_eta() -> bool:
        return await redis_ms(rc) > eta.timestamp() * 1000 + 100

    await eventually(past_eta)
    sched = server.new_scheduler()

    async def broken() -> float | None:
        raise RuntimeError("a bug in the periodic part")

    monkeypatch.setattr(sched.periodic, "fire_due", broken)
    with pytest.raises(RuntimeError, match="a bug in the periodic part"):
        await sched.run_once()  # raised after the promotion, so the loop backs off and logs it
    assert await rc.zscore(q.ready, delayed.task_id) is not None


# -- transient trouble quarantines nothing -------------------------------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private Redis for one test that stalls it and makes it refuse writes."""
    with RedisProcess() as proc:
        yield proc


async def test_redis_unreachable_or_refusing_quarantines_nothing(
    own_redis: RedisProcess,
    redis_config: RedisConfig,
    rc_text: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    cfg = Config(
        broker=own_redis.url,
        results_expire_in=600,
        shutdown_grace=2.0,
        redis=msgspec.structs.replace(redis_config, connect_timeout=1.0, read_timeout=1.0),
    )
    direct = aioredis.Redis(host=own_redis.host, port=own_redis.port)
    async with Server(cfg) as srv, AsyncExitStack() as stack:
        stack.push_async_callback(direct.aclose)
        register(srv, rc_text)  # marks go to the test's other Redis, which stays up
        code = await srv.send_periodic_task(EVERY_SECOND, Signature("mark", args=["good"]))
        await stack.enter_async_context(running_worker(srv, 5, scheduler=False))
        sched = await stack.enter_async_context(srv.scheduler())

        async def fires_again() -> None:
            before = await marked(rc_text, srv, "good")

            async def two_more() -> bool:
                return await marked(rc_text, srv, "good") >= before + 2

            await eventually(two_more, timeout=15)

        async def scheduler_saw(text: str) -> bool:
            return any(
                r.name == "vecna_async.scheduler" and text in _with_error(r) for r in caplog.records
            )

        await fires_again()
        own_redis.pause()  # unreachable: every call times out (BrokerUnavailable)
        try:
            await eventually(lambda: scheduler_saw("cannot reach Redis"), timeout=15)
        finally:
            own_redis.resume()
        await fires_again()

        # refusing writes: OOM error replies ("command not allowed when used memory > 'maxmemory'")
        await direct.config_set("maxmemory", 1)
        try:
            await eventually(lambda: scheduler_saw("maxmemory"), timeout=15)
        finally:
            await direct.config_set("maxmemory", 0)
        await fires_again()

        assert await sched.periodic.quarantined() == []
        assert list(await sched.periodic.definitions()) == [code]
    assert not [r for r in caplog.records if "quarantin" in r.getMessage()]
