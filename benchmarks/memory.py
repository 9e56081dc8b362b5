"""Redis memory per queued task, per result, per delayed task and per periodic entry, measured.

    python benchmarks/memory.py                      # a private redis-server, 2,000 of each
    python benchmarks/memory.py --url redis://host:6379/0 --count 500 --prefix memtest

Each measurement adds ``count`` items of one kind with a fresh key prefix and reports
``INFO memory used_memory`` before and after, divided by ``count`` (what Redis really spends,
allocator overhead and the sets' index entries included), next to ``MEMORY USAGE`` of one item's
own key where it has one. Payloads are small (``add(1, 2)``): add the size of your arguments
and results (JSON, about their ``len(json.dumps(...))``) to the numbers. The README's capacity
guide quotes a run of this script. With ``--url`` it writes under ``--prefix`` only and deletes
what it wrote; without, it starts a private redis-server on a free port (never 6379).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vecna_async import Config, RedisConfig, Server, Signature
from vecna_async.tasks.wire import outgoing, prepare


@dataclass
class Row:
    what: str
    per_item: float  # bytes of used_memory per item
    own_key: int | None  # MEMORY USAGE of one item's own key
    key: str


async def used(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def per_item(client: aioredis.Redis, count: int, add: Callable[[], Awaitable[None]]) -> float:
    before = await used(client)
    await add()
    return (await used(client) - before) / count


async def measure(url: str, count: int, prefix: str) -> list[Row]:
    rows: list[Row] = []
    config = Config(broker=url, results_expire_in=3600, redis=RedisConfig(key_prefix=prefix))
    client = aioredis.Redis.from_url(url)
    try:
        async with Server(config) as server:

            @server.task(name="add")
            async def add(a: int, b: int) -> int:
                return a + b

            q = server.keys.queue(config.default_queue)
            sigs = [Signature("add", args=[1, 2]) for _ in range(count)]
            ready = await per_item(client, count, lambda: _send(server, sigs))
            record = await _usage(client, q.record(sigs[0].id or ""))
            rows.append(Row("queued task (ready)", ready, record, "m:<id> HASH + ready ZSET entry"))

            worker = server.new_worker("memory", concurrency=100)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.launch)
                for sig in sigs:
                    await server.result(sig.id or "").get(timeout=60)
                worker.quit()
            # the records are gone, the states stay: what they take is what deleting them frees
            state = await _usage(client, q.state(sigs[0].id or ""))
            with_states = await used(client)
            await client.delete(*(q.state(sig.id or "") for sig in sigs))
            per_result = (with_states - await used(client)) / count
            rows.append(Row("result kept (task done)", per_result, state, "s:<id> STR, expires"))

            eta = datetime.now(UTC) + timedelta(days=1)
            later = [Signature("add", args=[1, 2], eta=eta) for _ in range(count)]
            delayed = await per_item(client, count, lambda: _send(server, later))
            rows.append(
                Row(
                    "delayed task (ETA)",
                    delayed,
                    await _usage(client, q.record(later[0].id or "")),
                    "m:<id> HASH + delayed ZSET entry",
                )
            )

            async def periodic() -> None:
                for i in range(count):
                    await server.send_periodic_task(
                        "0 0 1 1 *", Signature("add", args=[i, 2], id=f"p{i}")
                    )

            entry = await per_item(client, count, periodic)
            rows.append(
                Row(
                    "periodic entry (definition)",
                    entry,
                    None,
                    "{periodic}:defs HASH field + next ZSET entry",
                )
            )
            tick = int(datetime.now(UTC).timestamp() * 1000)
            message = outgoing(prepare(Signature("add", args=[1, 2]), config.default_queue), 10**6)
            await server.get_broker().publish_tick([message], "p0", 0, tick, 86_400)
            fired = await _usage(client, q.periodic_fired("p0"))
            what = "periodic code, per queue it fires into"
            rows.append(Row(what, float(fired or 0), fired, "fired:<code> HASH, expires"))
    finally:
        async for key in client.scan_iter(f"{prefix}:*", count=1000):
            await client.delete(key)
        await client.aclose()
    return rows


async def _send(server: Server, sigs: list[Signature]) -> None:
    for start in range(0, len(sigs), 500):
        await server.send_tasks(sigs[start : start + 500])


async def _usage(client: aioredis.Redis, key: str) -> int | None:
    size = await client.memory_usage(key)
    return int(size) if size is not None else None


def table(rows: list[Row], count: int) -> str:
    lines = [
        f"| item ({count:,} of each) | bytes each (used_memory) | MEMORY USAGE of its key | keys |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        own = f"{r.own_key:,}" if r.own_key is not None else "-"
        lines.append(f"| {r.what} | {r.per_item:,.0f} | {own} | {r.key} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="", help="a Redis to measure on (default: a private one)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--prefix", default=f"mem{uuid.uuid4().hex[:6]}")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url
        if not url:
            from tests.support.redis_procs import RedisProcess

            url = stack.enter_context(RedisProcess()).url
        rows = anyio.run(measure, url, args.count, args.prefix)
    out = table(rows, args.count)
    print(out)
    return out


if __name__ == "__main__":
    main()
