"""Chaos among the workers: SIGKILL storms, a stalled worker, long tasks under short leases.

Each test is one scenario of the chaos suite (see ``harness.py`` for the accounting: nothing
accepted may be lost, and every duplicate run must be explained by a fault the test injected).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from tests.chaos.harness import (
    Ledger,
    Progress,
    final_states,
    kill_storm,
    scenario,
    signature,
    wait_until_final,
    watching_states,
)
from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


@pytest.mark.timeout(600)
async def test_kill_storm(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """20,000 tasks, 4 workers, a random one SIGKILLed every ~2 s and restarted at once."""
    total, concurrency = 20_000, 25
    async with scenario(
        "kill-storm", ledger, log_dir, ledger_proc.url, broker=broker_proc.url
    ) as c:
        for _ in range(4):
            c.workers.start(concurrency)
        sigs = [signature("quick", i, 0.2, prefix="ks") for i in range(total)]
        finished = Progress(c.ledger, lambda: total)

        async with anyio.create_task_group() as tg:

            async def produce() -> None:
                for i in range(0, total, 500):
                    await c.producer.send(sigs[i : i + 500])

            tg.start_soon(produce)
            kills = await kill_storm(
                c.workers, lambda: c.workers.start(concurrency), finished, every=2.0, min_kills=5
            )
        c.notes.append(f"{kills} SIGKILLs")
        states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
        report = await c.account(c.producer.accepted, states=states)
    report.assert_delivered()
    assert len(c.producer.accepted) == total
    assert kills >= 5


async def started_in(ledger: Ledger, pid: int) -> set[str]:
    """Ids with a run that started in process ``pid``."""
    return {
        task_id
        for task_id, runs in (await ledger.run_records()).items()
        if any(r.pid == pid for r in runs)
    }


@pytest.mark.timeout(180)
async def test_sigstop_stale_owner_is_fenced(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """A worker holding 20 leases is SIGSTOPped for 2x the lease while another worker takes the
    tasks over; after SIGCONT its runs finish at once and it tries to settle them. Its outcomes
    must be fenced off: each task's final state is stored (published) once, it is the second
    worker's result, and it does not change afterwards.

    Half the tasks' second runs finish before the stale worker wakes (its settle meets an acked
    message), half after (its settle meets a message leased to the other worker)."""
    async with scenario(
        "sigstop-fencing", ledger, log_dir, ledger_proc.url, broker=broker_proc.url
    ) as c:
        lease = c.config.redis.lease_timeout
        channel = c.server.get_backend().reply_channel
        async with watching_states(broker_proc.url, channel) as watch:
            stale = c.workers.start(20)
            early = [signature("nap_by_run", 3.0, 0.5, prefix="early") for _ in range(10)]
            late = [signature("nap_by_run", 3.0, 2 * lease + 2.0, prefix="late") for _ in range(10)]
            await c.producer.send(early + late)
            ids = set(c.producer.accepted)

            async def all_started_in_stale() -> bool:
                return await started_in(c.ledger, stale.pid) >= ids

            await eventually(all_started_in_stale, timeout=30)
            paused_at = c.workers.pause(stale)
            fresh = c.workers.start(20)

            early_ids = {str(s.id) for s in early}

            async def taken_over() -> bool:
                """Every task runs again in the fresh worker, and the early ones finished there."""
                records = await c.ledger.run_records()
                return all(
                    len(records.get(i, [])) == 2
                    and records[i][1].pid == fresh.pid
                    and (i not in early_ids or records[i][1].end_ms is not None)
                    for i in ids
                )

            await eventually(taken_over, timeout=30)
            # the scenario: stopped for (at least) twice the lease
            await anyio.sleep(max(0.0, paused_at / 1000 + 2 * lease - time.time()))
            c.workers.resume(stale, paused_at)
            states = await wait_until_final(c.checker, ids, c.ledger)
            # both workers drain and exit: every settle the stale one still had is sent by then
            await c.workers.stop_all()
            after = await final_states(c.checker, ids)
        report = await c.account(ids, states=states)
    report.assert_delivered()
    records = await c.ledger.run_records()
    for task_id in sorted(ids):
        runs = records[task_id]
        assert [r.pid for r in runs] == [stale.pid, fresh.pid], (task_id, runs)
        state = states[task_id]
        assert state is not None
        assert state.results == [fresh.pid], f"{task_id}: the stale worker's result was stored"
        assert after[task_id] == state, f"{task_id}: state changed after the stale settle"
        published = watch.published.get(task_id, [])
        assert len(published) == 1, f"{task_id}: final state stored {len(published)}x: {published}"
        assert published[0].results == [fresh.pid]


@pytest.mark.timeout(180)
async def test_long_tasks_are_not_redelivered_while_they_heartbeat(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    """30 tasks of 3x the lease on 2 workers, with quick tasks flowing beside them (every claim
    reaps expired leases): each long task runs once and its state is stored once."""
    async with scenario(
        "long-tasks", ledger, log_dir, ledger_proc.url, broker=broker_proc.url
    ) as c:
        lease = c.config.redis.lease_timeout
        channel = c.server.get_backend().reply_channel
        async with watching_states(broker_proc.url, channel) as watch:
            for _ in range(2):
                c.workers.start(25)
            long = [signature("nap", 3 * lease, prefix="long") for _ in range(30)]
            await c.producer.send(long)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def quick_stream() -> None:
                    await c.producer.stream(
                        lambda i: signature("quick", i, prefix="q"), rate=50, stop=stop, limit=300
                    )

                tg.start_soon(quick_stream)
                states = await wait_until_final(c.checker, [str(s.id) for s in long], c.ledger)
                stop.set()
            states = await wait_until_final(c.checker, c.producer.accepted, c.ledger)
        report = await c.account(c.producer.accepted, states=states)
    report.assert_delivered()
    runs = await c.ledger.runs()
    for s in long:
        assert runs[str(s.id)] == 1, f"{s.id} ran {runs[str(s.id)]}x"
        assert len(watch.published[str(s.id)]) == 1
    assert not report.duplicates
    assert not watch.stored_more_than_once()
