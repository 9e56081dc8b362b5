"""Chaos in Redis: killed with -9 and restarted from its AOF, connections cut mid-command, its
script cache flushed, out of memory, and Sentinel failovers (planned and not).

Each test is one scenario of the chaos suite (see ``harness.py`` for the accounting: nothing
accepted may be lost, and every duplicate run must be explained by a fault the test injected).
Steady load comes from :meth:`Producer.stream`, whose sends retry until accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
import redis

from tests.chaos.harness import (
    Chaos,
    Fault,
    Ledger,
    now_ms,
    scenario,
    signature,
    wait_until_final,
    watching_states,
)
from tests.support.fault_proxy import Command, CutRule, FaultProxy, command_name
from tests.support.redis_procs import RedisProcess, RedisSentinelSet
from tests.support.vecna import eventually
from vecna_async import BrokerRefused, Signature
from vecna_async.scripts import script

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


def quick(i: int) -> Signature:
    """A task that runs up to 0.3 s: a fault often finds some of them mid-run."""
    return signature("quick", i, 0.3, prefix="q")


async def ended_more_than(c: Chaos, n: int, timeout: float = 60) -> None:
    """Wait until the ledger shows more than ``n`` tasks returned (the load is flowing)."""

    async def more() -> bool:
        return await c.ledger.ended_ids() > n

    await eventually(more, timeout=timeout)


async def flowing_again(c: Chaos, more: int, timeout: float = 30) -> None:
    """After a fault: wait until ``more`` further tasks returned. If they do not, note it and
    go on: the accounting then says what was lost (and which worker died) instead of a
    timeout saying nothing."""
    before = await c.ledger.ended_ids()
    try:
        await ended_more_than(c, before + more, timeout)
    except AssertionError:
        c.notes.append(f"the load did not flow again within {timeout:g}s after the fault")


@pytest.mark.timeout(240)
async def test_redis_kill_9_and_restart_from_aof(
    ledger: Ledger, ledger_proc: RedisProcess, log_dir: Path
) -> None:
    """Redis is SIGKILLed under load and restarted on the same port from its AOF; workers and
    the producer reconnect by themselves and every accepted send completes.

    Durability: ``appendfsync always``, not ``everysec``. A SIGKILL of the process alone loses
    nothing Redis has written to the AOF file (the page cache survives it), and with
    ``everysec`` Redis writes the file before it replies -- except while a background fsync is
    still running, when it may postpone the write by up to 2 s and reply anyway. On a busy
    machine that window is real, and a send (or settle) acknowledged in it could vanish,
    making "every accepted send completes" depend on disk timing. ``always`` writes and
    fsyncs before every reply, so an acknowledged send is on disk, whatever the timing.
    """
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisProcess(extra_args=aof) as broker:
        async with scenario(
            "redis-kill-9", ledger, log_dir, ledger_proc.url, broker=broker.url
        ) as c:
            c.supervise(3, 20)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def load() -> None:
                    await c.producer.stream(quick, rate=200, stop=stop, batch=10)

                tg.start_soon(load)
                await ended_more_than(c, 300)
                killed_at = now_ms()
                broker.kill()
                await anyio.sleep(3.0)  # the scenario: down for longer than a lease
                await anyio.to_thread.run_sync(broker.start)
                back_at = now_ms()
                lease_ms = int(c.config.redis.lease_timeout * 1000)
                outage = Fault("redis kill -9", None, killed_at, back_at + lease_ms)
                await flowing_again(c, 300)
                stop.set()
            accepted_before_kill = [i for i, at in c.producer.accepted.items() if at < killed_at]
            states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
            report = await c.account(c.producer.accepted, states=states, faults=[outage])
    report.assert_delivered()
    assert accepted_before_kill
    assert any(e[0] >= killed_at for e in c.producer.errors), "no send ever met the outage"


def script_call(*names: str) -> Callable[[Command], bool]:
    """Matches EVALSHA (or the EVAL fallback) of the named vecna scripts."""
    shas = {script(n).sha.encode() for n in names}
    markers = [f"-- {n}.lua".encode() for n in names]

    def matches(cmd: Command) -> bool:
        name = command_name(cmd)
        if name == "EVALSHA" and len(cmd) > 1:
            return cmd[1].lower() in shas
        return name == "EVAL" and len(cmd) > 1 and any(m in cmd[1] for m in markers)

    return matches


CUT_SCRIPTS = ("enqueue", "claim", "settle", "heartbeat")


@pytest.mark.timeout(240)
async def test_connections_cut_around_script_calls(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """Workers and producer reach Redis through a proxy that cuts the connection around the
    enqueue, claim, settle and heartbeat scripts: after Redis ran the call and before its reply
    came back (every 4th call of each), or before forwarding it (every 7th of the rest). Nothing
    may be lost, nothing run twice, no state stored twice."""
    with FaultProxy(broker_proc.address) as proxy:
        async with scenario(
            "proxy-cuts",
            ledger,
            log_dir,
            ledger_proc.url,
            broker=proxy.url,
            checker_broker=broker_proc.url,
        ) as c:
            rules = {
                name: [
                    CutRule(script_call(name), every=4, when="after"),
                    CutRule(script_call(name), every=7, when="before"),
                ]
                for name in CUT_SCRIPTS
            }
            proxy.rules = [r for pair in rules.values() for r in pair]
            channel = c.server.get_backend().reply_channel
            async with watching_states(broker_proc.url, channel) as watch:
                for _ in range(2):
                    c.workers.start(20)
                stop = anyio.Event()
                await c.producer.stream(quick, rate=100, stop=stop, batch=5, limit=1500)
                states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
                proxy.rules = []
                await c.workers.stop_all()
            cuts = {name: [r.cuts for r in pair] for name, pair in rules.items()}
            c.notes.append(f"connections cut (after, before): {cuts}")
            report = await c.account(c.producer.accepted, states=states)
    report.assert_delivered()
    assert not report.duplicates, f"tasks run twice with no worker fault: {report.duplicates}"
    twice = watch.stored_more_than_once()
    assert not twice, f"final states stored more than once: {dict(list(twice.items())[:5])}"
    for name, (after, before) in cuts.items():
        assert after > 0, f"the {name} script was never cut after it ran: {cuts}"
        assert before > 0, f"the {name} script was never cut before it ran: {cuts}"


@pytest.mark.timeout(240)
async def test_script_flush_and_maxmemory(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """Under steady load: SCRIPT FLUSH five times, then Redis at its memory limit (noeviction,
    ``maxmemory`` just above what it uses) for a few seconds, then the limit lifted. The
    producer gets a clear error (BrokerRefused naming OOM) while Redis refuses writes, and
    retries; afterwards everything accepted completes."""
    admin = redis.Redis(host=broker_proc.host, port=broker_proc.port)
    async with scenario(
        "script-flush-maxmemory", ledger, log_dir, ledger_proc.url, broker=broker_proc.url
    ) as c:
        c.supervise(2, 20)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def load() -> None:
                await c.producer.stream(quick, rate=100, stop=stop, batch=5)

            tg.start_soon(load)
            await ended_more_than(c, 100)
            for _ in range(5):
                before = await c.ledger.ended_ids()
                admin.script_flush()
                await ended_more_than(c, before + 20)
            assert not c.producer.errors, (
                f"sends failed around SCRIPT FLUSH: {c.producer.errors[:3]}"
            )

            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used + 64 * 1024)
            limited_at = now_ms()

            async def refused() -> bool:
                return any(at >= limited_at for at, _, _ in c.producer.errors)

            await eventually(refused, timeout=30)
            await anyio.sleep(2.0)  # the scenario: a few seconds at the limit
            admin.config_set("maxmemory", 0)
            lifted_at = now_ms()
            lease_ms = int(c.config.redis.lease_timeout * 1000)
            oom = Fault("maxmemory", None, limited_at, lifted_at + lease_ms)
            await flowing_again(c, 200)
            stop.set()
        states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
        unclear = [e for _, _, e in c.producer.errors if not _is_oom_refusal(e)]
        if unclear:
            c.failures.append(
                f"the producer got {len(unclear)} error(s) other than BrokerRefused(OOM ...), "
                f"e.g. {type(unclear[0]).__module__}.{type(unclear[0]).__name__}: {unclear[0]}"
            )
        report = await c.account(c.producer.accepted, states=states, faults=[oom])
    admin.close()
    report.assert_delivered()


def _is_oom_refusal(exc: BaseException) -> bool:
    return isinstance(exc, BrokerRefused) and exc.reply.startswith("OOM") and exc.transient


@pytest.fixture
def sentinel_set() -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet() as sset:
        yield sset


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill", [False, True], ids=["planned", "unplanned"])
async def test_sentinel_failover_under_load(
    ledger: Ledger,
    ledger_proc: RedisProcess,
    sentinel_set: RedisSentinelSet,
    log_dir: Path,
    kill: bool,
) -> None:
    """50 tasks/s on two workers through Sentinel, ``wait_replicas=1``; the master fails over
    (``SENTINEL FAILOVER``, or SIGKILL and the sentinels notice; then the old master comes back
    as a replica). Every accepted send runs and every result is stored.

    A send that raises is sent again with the same id until a call returns: with
    ``wait_replicas`` the returning call is the one that says a replica has the message."""
    name = "sentinel-failover-" + ("unplanned" if kill else "planned")
    async with scenario(
        name, ledger, log_dir, ledger_proc.url, broker=sentinel_set.url, wait_replicas=1
    ) as c:
        c.supervise(2, 20)
        c.producer.resend_blindly = True
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def load() -> None:
                await c.producer.stream(quick, rate=50, stop=stop)

            tg.start_soon(load)
            await ended_more_than(c, 100)
            started_at = now_ms()
            await anyio.to_thread.run_sync(lambda: sentinel_set.failover(kill=kill))
            if kill:
                await anyio.to_thread.run_sync(sentinel_set.replica.restart)
            await anyio.to_thread.run_sync(sentinel_set.wait_ready)
            ready_at = now_ms()
            lease_ms = int(c.config.redis.lease_timeout * 1000)
            failover = Fault("failover", None, started_at, ready_at + lease_ms)
            await flowing_again(c, 100)
            stop.set()
        states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
        c.notes.append(f"failover took {(ready_at - started_at) / 1000:.1f}s")
        report = await c.account(c.producer.accepted, states=states, faults=[failover])
    report.assert_delivered()
