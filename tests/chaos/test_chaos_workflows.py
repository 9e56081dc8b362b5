"""Chaos around workflows and the scheduler: cron ticks fired by five schedulers that keep being
SIGKILLed, and a chord of 200 members whose workers keep being SIGKILLed.

Scenarios of the chaos suite (see ``harness.py`` for the accounting).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import (
    QUEUE,
    Ledger,
    Proc,
    Progress,
    kill_storm,
    now_ms,
    scenario,
    wait_until_final,
)
from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually
from vecna_async import Chord, Group, Signature, State, TaskState
from vecna_async.messages import periodic_decoder
from vecna_async.scheduler.periodic import firing_messages

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

CRON_SECONDS = 30.0
SCHEDULERS = 5


@pytest.mark.timeout(240)
async def test_cron_ticks_fire_once_across_killed_schedulers(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """A ``*/1 * * * * *`` task, 5 scheduler processes for 30 s, a random one SIGKILLed every
    ~2 s and restarted. The two workers running the ticks are never faulted, so every tick must
    run exactly once; a tick that did not fire at all must be explained: by the firing before
    it having happened late (the schedule then moves on from "now": missed ticks fire once),
    or by a scheduler killed in between."""
    async with scenario("cron", ledger, log_dir, ledger_proc.url, broker=broker_proc.url) as c:
        rc = aioredis.Redis.from_url(broker_proc.url)
        for _ in range(2):
            c.workers.start(10, "--no-scheduler")

        def start_scheduler() -> Proc:
            # a worker of a queue nobody sends to: it only runs its scheduler
            return c.workers.start(1, "--queue", "chaos_schedulers", role="scheduler")

        for _ in range(SCHEDULERS):
            start_scheduler()
        code = await c.server.send_periodic_task("*/1 * * * * *", Signature("tick"))
        defined_at = now_ms()
        raw = await rc.hget(c.server.keys.periodic_defs, code)
        assert raw is not None
        definition = periodic_decoder.decode(raw)
        storm_end = time.monotonic() + CRON_SECONDS

        async def window_over() -> bool:
            return time.monotonic() >= storm_end

        kills = await kill_storm(
            c.workers, start_scheduler, window_over, every=2.0, role="scheduler"
        )
        await c.server.cancel_periodic_task(code)
        canceled_at = now_ms()
        q = c.server.keys.queue(QUEUE)

        async def drained() -> bool:
            # a tick being fired during the cancel may still run: wait until nothing is queued,
            # leased or running
            idle = not await rc.zcard(q.ready) and not await rc.zcard(q.leases)
            return idle and await c.ledger.ended_ids() == await c.ledger.started_ids()

        await eventually(drained, timeout=30)
        await rc.aclose()

        first_tick = defined_at // 1000 * 1000
        by_id = {
            firing_messages(definition, tick)[0].id: tick
            for tick in range(first_tick, canceled_at + 3000, 1000)
        }
        records = await c.ledger.run_records()
        unknown = sorted(set(records) - set(by_id))
        fired = sorted(by_id[i] for i in records if i in by_id)
        states = await wait_until_final(c.checker, [*records], c.ledger)
        killed_at = [f.start_ms for f in c.workers.faults]
        missed, unexplained = [], []
        first_run = {by_id[i]: runs[0].start_ms for i, runs in records.items() if i in by_id}
        for prev, nxt in itertools.pairwise(fired):
            for tick in range(prev + 1000, nxt, 1000):
                missed.append(tick)
                late = first_run[prev] >= tick
                kill_between = any(prev <= k <= tick + 1000 for k in killed_at)
                if not (late or kill_between):
                    unexplained.append(tick)
        c.notes.append(
            f"{kills} scheduler SIGKILLs; {len(fired)} ticks fired, {len(missed)} skipped "
            f"({len(missed) - len(unexplained)} after a late firing or a kill)"
        )
        report = await c.account(list(records), states=states)
    report.assert_delivered()
    assert not unknown, f"runs of ids that are no tick of the definition: {unknown[:5]}"
    assert not report.duplicates, f"ticks fired more than once: {report.duplicates}"
    assert not unexplained, f"ticks never fired, with the one before on time: {unexplained}"
    assert len(fired) >= CRON_SECONDS / 3, f"only {len(fired)} ticks fired in {CRON_SECONDS}s"
    assert kills >= 5


@pytest.mark.timeout(240)
async def test_chord_callback_once_with_all_results_while_workers_die(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """A chord of 200 members (1-2 s each) on 3 workers, a random worker SIGKILLed every ~2 s
    until every member has returned once: the callback runs exactly once, with all 200 results
    in group order."""
    members, concurrency = 200, 10
    async with scenario("chord", ledger, log_dir, ledger_proc.url, broker=broker_proc.url) as c:
        for _ in range(3):
            c.workers.start(concurrency)
        sigs = [
            Signature("member", args=[f"m{i}-{c.ledger.prefix}", i, 1.0 + (i % 5) * 0.25])
            for i in range(members)
        ]
        for s in sigs:
            s.id = str(s.args[0])
        callback_id = f"cb-{c.ledger.prefix}"
        callback = Signature("gather", args=[callback_id], id=callback_id)
        result = await c.server.send_chord(Chord(Group(*sigs), callback))
        ids = [str(s.id) for s in sigs] + [callback_id]
        members_done = Progress(c.ledger, lambda: members)
        kills = await kill_storm(
            c.workers, lambda: c.workers.start(concurrency), members_done, every=2.0
        )
        c.notes.append(f"{kills} SIGKILLs")
        states = await wait_until_final(c.checker, ids, c.ledger)

        def expected(task_id: str, state: TaskState | None) -> bool:
            if state is None or state.state is not State.SUCCESS:
                return False
            return task_id != callback_id or state.results == [members]

        report = await c.account(ids, states=states, expect=expected)
        runs = await c.ledger.runs()
        received = await c.ledger.gather_results(callback_id)
    report.assert_delivered()
    assert runs.get(callback_id) == 1, f"the callback ran {runs.get(callback_id, 0)}x"
    assert received == [[i * i for i in range(members)]]
    assert await result.get(timeout=5) == members
    assert kills >= 3
