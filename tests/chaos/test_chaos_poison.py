"""Poison messages: bytes that are no message at all, a message of an unknown format version,
and a task that kills its worker process every time it runs. Each ends in the dead-letter set
with its reason and a FAILURE state saying so, while the other tasks flow past them.

One scenario of the chaos suite (see ``harness.py`` for the accounting).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from tests.chaos.harness import (
    QUEUE,
    Ledger,
    scenario,
    signature,
    wait_until_final,
)
from tests.support.redis_procs import RedisProcess
from tests.support.vecna import eventually
from vecna_async import Server, State, TaskState
from vecna_async.messages import TaskMessage, encode
from vecna_async.tasks.wire import Outgoing

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def write_raw_message(
    rc: aioredis.Redis, server: Server, task_id: str, body: bytes, score: int
) -> None:
    """Queue a message by hand, as enqueue.lua does (tests/integration/test_delivery.py's way):
    record b/n/p/d/i/r, then the ready entry. For bodies the enqueue script cannot carry."""
    q = server.keys.queue(QUEUE)
    await rc.hset(
        q.record(task_id), mapping={"b": body, "n": "quick", "p": score, "d": 0, "i": 0, "r": ""}
    )
    await rc.zadd(q.ready, {task_id: score})


def future_version_body(task_id: str) -> bytes:
    """A well-formed message of format version 99 (this code reads version 1)."""
    body = encode(TaskMessage(id=task_id, name="quick", queue=QUEUE, args=[task_id, 1]))
    assert body.startswith(b'{"v":1,')
    return b'{"v":99,' + body[len(b'{"v":1,') :]


@pytest.mark.timeout(240)
async def test_poison_messages_are_dead_lettered_and_the_rest_flows(
    ledger: Ledger, ledger_proc: RedisProcess, broker_proc: RedisProcess, log_dir: Path
) -> None:
    max_deliveries = 3
    async with scenario(
        "poison",
        ledger,
        log_dir,
        ledger_proc.url,
        broker=broker_proc.url,
        max_deliveries=max_deliveries,
    ) as c:
        stop = anyio.Event()
        rc = aioredis.Redis.from_url(broker_proc.url)
        reply = c.server.get_backend().reply_channel
        binary = f"binary-{os.urandom(6).hex()}"
        garbage = f"garbage-{os.urandom(6).hex()}"
        v99 = f"v99-{os.urandom(6).hex()}"
        killer = signature("suicide", prefix="killer")
        c.supervise(2, 10)
        await c.producer.send([signature("quick", i, 0.2, prefix="q0") for i in range(50)])
        await write_raw_message(rc, c.server, binary, b"\x00\xff\xfe not a message \x81", 0)
        await c.server.get_broker().publish(
            [
                Outgoing(QUEUE, garbage, "quick", b"GARBAGE {not json", 0, 0, False, reply),
                Outgoing(QUEUE, v99, "quick", future_version_body(v99), 0, 0, False, reply),
            ]
        )
        poison = {binary, garbage, v99, str(killer.id)}

        def all_dead(ids: set[str]) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                dead = await c.server.get_broker().get_dead_letters(QUEUE)
                return {d.task_id for d in dead} >= ids

            return check

        try:
            # the undecodable ones first: a worker the killer takes down before it settled
            # their dead-lettering would deliver them again, and a third time would make
            # their reason "delivered 3 times" instead of what is wrong with them
            await eventually(all_dead({binary, garbage, v99}), timeout=30)
            await c.producer.send([killer])
            await c.producer.stream(
                lambda i: signature("quick", i, 0.2, prefix="q"), rate=100, stop=stop, limit=600
            )
            await eventually(all_dead(poison), timeout=60)
        finally:
            states = await wait_until_final(c.checker, [*c.producer.accepted, *poison], c.ledger)
            stop.set()
        dead = {d.task_id: d for d in await c.server.get_broker().get_dead_letters(QUEUE)}
        await rc.aclose()
        records = await c.ledger.run_records()
        c.workers.note_exits()
        killed = {f.pid for f in c.workers.faults if f.kind == "SIGKILL (self)"}
        # A task claimed together with the killer (it is reaped and claimed again beside it) can
        # die with it every time and reach max_deliveries too: it is dead-lettered, not lost, as
        # long as every run it had was in a process the killer took down.
        bystanders = {
            task_id
            for task_id, letter in dead.items()
            if task_id not in poison
            and f"delivered {max_deliveries} times" in letter.reason
            and all(r.pid in killed for r in records.get(task_id, []))
        }
        if bystanders:
            c.notes.append(f"{len(bystanders)} bystander(s) dead-lettered with the killer")

        def expected(task_id: str, state: TaskState | None) -> bool:
            if task_id in poison or task_id in bystanders:
                return state is not None and state.state is State.FAILURE
            return state is not None and state.state is State.SUCCESS

        report = await c.account(
            [*c.producer.accepted, binary, garbage, v99], states=states, expect=expected
        )
    report.assert_delivered()
    assert set(dead) - bystanders == poison, f"dead letters: {sorted(dead)}"
    assert "malformed" in dead[binary].reason, dead[binary].reason
    assert "malformed" in dead[garbage].reason, dead[garbage].reason
    assert "version" in dead[v99].reason, dead[v99].reason
    assert "99" in dead[v99].reason, dead[v99].reason
    assert dead[str(killer.id)].deliveries == max_deliveries
    assert f"delivered {max_deliveries} times" in dead[str(killer.id)].reason
    for task_id, letter in dead.items():
        state = states[task_id]
        assert state is not None, task_id
        assert letter.reason in state.error, (task_id, state)
    runs = await c.ledger.runs()
    assert runs[str(killer.id)] == max_deliveries
    assert len(killed) == max_deliveries, c.workers.faults
