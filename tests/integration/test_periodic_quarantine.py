"""Periodic definitions no scheduler can fire (not JSON, an unknown format version, firings over
``max_message_bytes``, a hand-edited invalid spec): each is moved aside once into the quarantine
hash with why, logged once however many schedulers meet it, and everything else keeps being
scheduled -- in the same pass. Redis being unreachable or refusing writes quarantines nothing.

A bad definition is made by sending a good one and spoiling its stored JSON, as a hand edit with
``redis-cli`` would. Synchronisation is by polling with deadlines or by driving ``run_once``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually
from vecna_async import Server, Signature

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"

# -- helpers -------------------------------------------------------------------------------------


async def redis_ms(rc: aioredis.Redis) -> int:
    seconds, micros = await rc.time()
    return int(seconds) * 1000 + int(micros) // 1000


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
