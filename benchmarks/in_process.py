"""memory:// next to a local Redis: what running the scripts in process costs.

    python benchmarks/in_process.py                 # a private redis-server and memory://
    python benchmarks/in_process.py --count 5000 --round-trips 1000

Both backends run the same workloads with the producer and a worker (concurrency 100) in this
one process, under uvloop: **drain** (send ``count`` no-op tasks in batches of 100, then time a
worker taking them all to SUCCESS) and **round trip** (one ``send`` + ``get()`` at a time, p50 and
p99). Only the backend changes, so the ratio is the cost of fakeredis and its Lua against a
redis-server over loopback. (``benchmarks/run.py`` compares systems, each worker in its own
process, which memory:// cannot do.)
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from contextlib import ExitStack

import anyio

from vecna_async import Config, RedisConfig, Server, Signature, memory


def build(url: str) -> Server:
    server = Server(Config(broker=url, redis=RedisConfig(key_prefix=f"io{uuid.uuid4().hex[:6]}")))

    @server.task(name="noop")
    async def noop() -> None:
        return None

    return server


async def drain(url: str, count: int) -> float:
    """Tasks per second: ``count`` queued first, then one worker takes them all."""
    server = build(url)
    async with server:
        sent = []
        for start in range(0, count, 100):
            batch = [Signature("noop") for _ in range(min(100, count - start))]
            sent += await server.send_tasks(batch)
        async with anyio.create_task_group() as tg:
            worker = server.new_worker("drain", concurrency=100, scheduler=False)
            began = time.perf_counter()
            tg.start_soon(worker.launch)
            for result in sent:
                await result.get(timeout=300)
            elapsed = time.perf_counter() - began
            worker.quit()
    return count / elapsed


async def round_trips(url: str, count: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one send + get at a time, the worker idle between them."""
    server = build(url)
    times: list[float] = []
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("rt", concurrency=100, scheduler=False)
        tg.start_soon(worker.launch)
        for i in range(count + 20):
            began = time.perf_counter()
            result = await server.send_task(Signature("noop"))
            await result.get(timeout=30)
            if i >= 20:  # warm-up: connections, script cache
                times.append((time.perf_counter() - began) * 1000)
        worker.quit()
    cuts = statistics.quantiles(times, n=100)
    return cuts[49], cuts[98]


def measure(url: str, count: int, rounds: int) -> tuple[float, float, float]:
    """(drain tasks/s, round trip p50 ms, p99 ms) on ``url``."""

    async def both() -> tuple[float, float, float]:
        rate = await drain(url, count)
        p50, p99 = await round_trips(url, rounds)
        return rate, p50, p99

    result: tuple[float, float, float] = anyio.run(
        both, backend="asyncio", backend_options=_loop_options()
    )
    return result


def _loop_options() -> dict[str, bool]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="", help="a Redis to compare with (default: private)")
    parser.add_argument("--count", type=int, default=5000, help="tasks to drain")
    parser.add_argument("--round-trips", type=int, default=500)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url
        if not url:
            from tests.support.redis_procs import RedisProcess

            url = stack.enter_context(RedisProcess()).url
        rows = {
            "redis-server (loopback)": measure(url, args.count, args.round_trips),
            "memory://": measure("memory://in-process-bench", args.count, args.round_trips),
        }
        memory.discard("memory://in-process-bench")
    redis_rate = rows["redis-server (loopback)"][0]
    lines = [
        f"| backend | drain {args.count:,} no-op tasks (tasks/s) | round trip p50 / p99 (ms) |",
        "|---|---:|---:|",
    ]
    for name, (rate, p50, p99) in rows.items():
        share = "" if rate == redis_rate else f" ({rate / redis_rate:.2f}x)"
        lines.append(f"| {name} | {rate:,.0f}{share} | {p50:.2f} / {p99:.2f} |")
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main()
