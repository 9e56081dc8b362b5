"""Writes ``v0_1_keys.json``: what vecna_async 0.1 leaves in Redis, for ``test_upgrade.py``.

Run it once with the 0.1 release importable (``git worktree add /tmp/v0.1 <0.1 commit>``, then
``PYTHONPATH=/tmp/v0.1 python tests/data/make_v0_1_fixture.py redis://127.0.0.1:PORT/0``) against
an empty Redis. It sends, with 0.1's own code: a task waiting, a task delayed, a periodic task, a
finished task, a dead-lettered task, a chord with one member done, and a chain whose second link
was canceled ahead; then it dumps every key under the prefix (``DUMP``, base64) with its TTL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from vecna_async import Chain, Chord, Config, Group, RedisConfig, Server, Signature

PREFIX = "up01"
QUEUE = "vecna_tasks"


async def add(a: int, b: int) -> int:
    return a + b


async def main(url: str) -> None:
    cfg = Config(
        broker=url,
        results_expire_in=86_400,
        redis=RedisConfig(
            key_prefix=PREFIX, lease_timeout=0.3, heartbeat_interval=0.1, max_deliveries=1
        ),
    )
    async with Server(cfg) as srv, Server(cfg) as only_add:
        only_add.register_task("add", add)  # a worker that knows "add" only
        broker = srv.get_broker()
        # finished, and a chord with one member done: run by a 0.1 worker that knows "add" only
        # (member-1 is an "add2": that worker parks it)
        done = await srv.send_task(Signature("add", args=[1, 1], id="finished-1"))
        chord = Chord(
            Group(
                Signature("add", args=[1, 2], id="member-0"),
                Signature("add2", args=[3, 4], id="member-1"),
            ),
            Signature("add", args=[100], id="chord-cb"),
        )
        await srv.send_chord(chord)
        worker = only_add.new_worker("w", 2, scheduler=False)
        task = asyncio.create_task(worker.launch())
        assert await done.get(timeout=10) == 2
        assert await srv.result("member-0").get(timeout=10) == 3
        worker.quit()
        await task
        # a dead letter: claimed, never settled, its one lease expired
        await srv.send_task(Signature("boom", args=[5], id="dead-1"))
        (claimed,) = await broker.claim(QUEUE, 1, ["boom"])
        assert claimed.id == "dead-1"
        await asyncio.sleep(0.5)
        await broker.claim(QUEUE, 0, ["boom"])  # reaps the expired lease: dead-lettered
        # waiting, delayed, periodic
        await srv.send_task(Signature("add", args=[2, 3], id="waiting-1"))
        eta = datetime.now(UTC) + timedelta(seconds=2)
        await srv.send_task(Signature("add", args=[4, 5], id="delayed-1", eta=eta))
        await srv.send_periodic_task("* * * * * *", Signature("add", args=[7, 7]))
        # a chain whose second link is canceled before it is queued
        chain = Chain(
            Signature("add", args=[1, 1], id="chain-0"), Signature("add", args=[10], id="chain-1")
        )
        await srv.send_chain(chain)
        assert await srv.cancel_delayed_task(chain.tasks[1])
    client = redis.Redis.from_url(url)
    dumped = {}
    for key in client.scan_iter(f"{PREFIX}:*"):
        ttl = client.pttl(key)
        dump = client.dump(key)
        assert dump is not None
        dumped[key.decode()] = {
            "dump": base64.b64encode(dump).decode(),
            "pttl": ttl if ttl > 0 else 0,
        }
    out = Path(__file__).with_name("v0_1_keys.json")
    out.write_text(json.dumps({"prefix": PREFIX, "queue": QUEUE, "keys": dumped}, indent=1))
    print(f"wrote {len(dumped)} keys to {out}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
