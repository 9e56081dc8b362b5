"""Scheduler benchmarks: promotion throughput, delayed-task lateness and cron-tick lateness.

    python benchmarks/scheduler_bench.py [--quick]

Starts its own private ``redis-server`` on a free loopback port (``tests/support/redis_procs.py``;
never the shared 6379) and measures, each with 1 and with 3 schedulers (separate processes, each
running ``async with server.scheduler()``):

(a) promotion throughput: 100,000 delayed entries due at the same instant; the time from that
    instant (Redis clock) until the delayed set is empty, i.e. all entries are ready. Target
    >= 50,000 entries/s.
(b) delayed-task lateness: 500 tasks due over 10 s (one every 20 ms), a worker with concurrency
    100 in this process (``scheduler=False``); lateness = task start - ETA. Target p99 <= 50 ms.
(c) cron-tick lateness: a ``* * * * * *`` periodic task for ~20 s; lateness = task start - tick
    (the whole second). Target p99 <= 50 ms. Also checks each tick ran exactly once.

Prints a Markdown table and writes ``benchmarks/results/scheduler.md`` and ``.json``.
Task start times are read from the local clock and ETAs/ticks are set on Redis's clock: both run
on this host, so they agree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.redis_procs import RedisProcess  # noqa: E402
from vecna_async import Config, RedisConfig, Server, Signature  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
THIS = Path(__file__).resolve()
QUEUE = "vecna_tasks"
SCHEDULER_POLL_MS = 1000  # the default: the cap on a sleeping scheduler's nap (a safety net)


# -- plumbing --------------------------------------------------------------------------------------


def make_config(url: str, prefix: str) -> Config:
    return Config(
        broker=url,
        results_expire_in=600,
        redis=RedisConfig(
            key_prefix=prefix,
            delayed_tasks_poll_period=SCHEDULER_POLL_MS,
            max_active=200,
        ),
    )


def run_async(main: Callable[[], Awaitable[None]]) -> None:
    """Like the CLI: asyncio with uvloop when it is installed."""
    options: dict[str, Any] = {}
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        pass
    anyio.run(main, backend="asyncio", backend_options=options)


def child_scheduler(url: str, prefix: str) -> None:
    """The body of a scheduler subprocess: run one scheduler until killed."""

    async def main() -> None:
        server = Server(make_config(url, prefix))
        async with server, server.scheduler():
            await anyio.sleep_forever()

    run_async(main)


class Schedulers:
    """``n`` scheduler subprocesses on one key prefix; waits until all listen for wake-ups."""

    def __init__(self, url: str, prefix: str, n: int) -> None:
        self.url, self.prefix, self.n = url, prefix, n
        self.procs: list[Process] = []

    async def __aenter__(self) -> Schedulers:
        for _ in range(self.n):
            argv = [sys.executable, str(THIS)]
            argv += ["--child-scheduler", self.url, self.prefix]
            self.procs.append(
                await anyio.open_process(
                    argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=None, stderr=None
                )
            )
        client = aioredis.Redis.from_url(self.url)
        channel = f"{self.prefix}:sched"
        try:
            with anyio.fail_after(30):
                while True:
                    reply = await client.pubsub_numsub(channel)
                    if int(reply[0][1]) >= self.n:
                        break
                    for p in self.procs:
                        if p.returncode is not None:
                            raise RuntimeError(f"scheduler process exited with {p.returncode}")
                    await anyio.sleep(0.05)
        finally:
            await client.aclose()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            for p in self.procs:
                if p.returncode is None:
                    p.terminate()
            for p in self.procs:
                with anyio.move_on_after(10) as scope:
                    await p.wait()
                if scope.cancelled_caught:
                    p.kill()
                    await p.wait()
                await p.aclose()


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    benchmark: str
    schedulers: int
    metric: str
    value: float
    unit: str
    target: str
    ok: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  {row.benchmark} [{row.schedulers} scheduler(s)] {row.metric}: "
            f"{row.value:,.1f} {row.unit} (target {row.target}) {'ok' if row.ok else 'MISSED'}",
            flush=True,
        )


# -- (a) promotion throughput -------------------------------------------------------------------


async def bench_promotion(url: str, n_sched: int, entries: int, report: Report) -> None:
    prefix = f"bp{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(url)
    delayed_key = f"{prefix}:{{{QUEUE}}}:delayed"
    try:
        async with Schedulers(url, prefix, n_sched), Server(make_config(url, prefix)) as producer:
            lead_ms = 4000 + entries // 25  # time to enqueue them all before they are due
            due_ms = await redis_ms(client) + lead_ms
            eta = datetime.fromtimestamp(due_ms / 1000, UTC)
            started = time.monotonic()
            chunk = 5000
            for start in range(0, entries, chunk):
                n = min(chunk, entries - start)
                await producer.send_tasks(
                    Signature("noop", args=[start + i], eta=eta) for i in range(n)
                )
            enqueue_s = time.monotonic() - started
            if await redis_ms(client) > due_ms - 200:
                raise RuntimeError(f"enqueueing {entries} entries took {enqueue_s:.1f}s: too slow")
            assert await client.zcard(delayed_key) == entries

            # poll (Redis clock, delayed-set size) until the set is empty
            first_move_ms: int | None = None
            done_ms: int | None = None
            with anyio.fail_after(lead_ms / 1000 + 60):
                while done_ms is None:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.time()
                        pipe.zcard(delayed_key)
                        (seconds, micros), left = await pipe.execute()
                    now_ms = int(seconds) * 1000 + int(micros) // 1000
                    if first_move_ms is None and left < entries:
                        first_move_ms = now_ms
                    if left == 0:
                        done_ms = now_ms
                    await anyio.sleep(0.002 if now_ms > due_ms - 100 else 0.02)
            assert first_move_ms is not None
            ready = await client.zcard(f"{prefix}:{{{QUEUE}}}:ready")
    finally:
        await client.flushall()
        await client.aclose()
    total_s = max(done_ms - due_ms, 1) / 1000
    moving_s = max(done_ms - first_move_ms, 1) / 1000
    rate = entries / total_s
    report.details[f"promotion_{n_sched}"] = {
        "entries": entries,
        "ready_after": ready,
        "enqueue_seconds": round(enqueue_s, 3),
        "due_to_all_ready_ms": done_ms - due_ms,
        "first_move_seen_after_due_ms (2 ms polling, coarse)": first_move_ms - due_ms,
        "moving_ms": done_ms - first_move_ms,
        "entries_per_second_from_due": round(rate),
        "entries_per_second_while_moving": round(entries / moving_s),
    }
    report.add(
        Row(
            "(a) promotion, 100k due at once",
            n_sched,
            "throughput (due -> all ready)",
            rate,
            "entries/s",
            ">= 50,000",
            rate >= 50_000 and ready == entries,
        )
    )
    report.add(
        Row(
            "(a) promotion, 100k due at once",
            n_sched,
            "time due -> all ready",
            float(done_ms - due_ms),
            "ms",
            "-",
            True,
        )
    )


# -- (b) delayed-task lateness --------------------------------------------------------------------


async def bench_delayed(
    url: str, n_sched: int, tasks: int, spread_s: float, report: Report
) -> None:
    prefix = f"bd{uuid.uuid4().hex[:8]}"
    lateness: list[float] = []
    done = anyio.Event()

    async def probe(eta_s: float) -> None:
        lateness.append(time.time() - eta_s)
        if len(lateness) >= tasks:
            done.set()

    client = aioredis.Redis.from_url(url)
    server = Server(make_config(url, prefix))
    server.register_task("probe", probe)
    try:
        async with Schedulers(url, prefix, n_sched), server, anyio.create_task_group() as tg:
            worker = server.new_worker("bench", 100, scheduler=False)
            tg.start_soon(worker.launch)
            base_ms = await redis_ms(client) + 1000
            sigs = []
            for i in range(tasks):
                due_ms = base_ms + round(i * spread_s * 1000 / tasks)
                eta = datetime.fromtimestamp(due_ms / 1000, UTC)
                sigs.append(Signature("probe", args=[due_ms / 1000], eta=eta))
            await server.send_tasks(sigs)
            with anyio.fail_after(spread_s + 30):
                await done.wait()
            worker.quit()
    finally:
        await client.flushall()
        await client.aclose()
    ms = [x * 1000 for x in lateness]
    early = [x for x in ms if x < 0]
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    report.details[f"delayed_{n_sched}"] = {
        "tasks": tasks,
        "spread_seconds": spread_s,
        "p50_ms": round(p50, 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(ms), 2),
        "min_ms": round(min(ms), 2),
        "started_before_eta": len(early),
    }
    name = f"(b) delayed lateness, {tasks} tasks over {spread_s:g}s"
    report.add(Row(name, n_sched, "p50 start - ETA", p50, "ms", "-", True))
    report.add(Row(name, n_sched, "p99 start - ETA", p99, "ms", "<= 50", 0 <= p99 <= 50))
    report.add(Row(name, n_sched, "max start - ETA", max(ms), "ms", "-", not early))


# -- (c) cron-tick lateness -----------------------------------------------------------------------


async def bench_cron(url: str, n_sched: int, seconds: int, report: Report) -> None:
    prefix = f"bc{uuid.uuid4().hex[:8]}"
    starts: list[float] = []
    done = anyio.Event()

    async def tick() -> None:
        starts.append(time.time())
        if len(starts) >= seconds:
            done.set()

    client = aioredis.Redis.from_url(url)
    server = Server(make_config(url, prefix))
    server.register_task("tick", tick)
    try:
        async with Schedulers(url, prefix, n_sched), server, anyio.create_task_group() as tg:
            worker = server.new_worker("bench", 100, scheduler=False)
            tg.start_soon(worker.launch)
            code = await server.send_periodic_task("* * * * * *", Signature("tick"))
            with anyio.fail_after(seconds + 15):
                await done.wait()
            await server.cancel_periodic_task(code)
            await anyio.sleep(0.5)  # let a tick fired during the cancel finish: counted too
            worker.quit()
    finally:
        await client.flushall()
        await client.aclose()
    ms = [(t - math.floor(t)) * 1000 for t in starts]
    per_second = Counter(math.floor(t) for t in starts)
    twice = sum(1 for n in per_second.values() if n > 1)
    span = max(per_second) - min(per_second) + 1
    missing = span - len(per_second)
    p50, p99 = percentile(ms, 50), percentile(ms, 99)
    report.details[f"cron_{n_sched}"] = {
        "executions": len(starts),
        "seconds_spanned": span,
        "seconds_with_two_or_more": twice,
        "seconds_without_execution": missing,
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(ms), 2),
    }
    name = f"(c) cron lateness, * * * * * * for {seconds}s"
    report.add(Row(name, n_sched, "p50 start - tick", p50, "ms", "-", True))
    report.add(Row(name, n_sched, "p99 start - tick", p99, "ms", "<= 50", p99 <= 50))
    report.add(
        Row(
            name, n_sched, "ticks run twice / missed", twice + missing, "", "0", not twice + missing
        )
    )


# -- output ---------------------------------------------------------------------------------------


def markdown(report: Report, meta: dict[str, Any]) -> str:
    lines = [
        "# Scheduler benchmark",
        "",
        f"{meta['date']} -- Python {meta['python']}, {meta['redis']}, {meta['cpus']} CPU(s), "
        f"{meta['platform']}. Schedulers run as separate processes; the worker and the "
        "measuring code share one process. `python benchmarks/scheduler_bench.py`.",
        "",
        "| benchmark | schedulers | metric | value | target | met |",
        "|---|---:|---|---:|---|:-:|",
    ]
    for r in report.rows:
        value = f"{r.value:,.0f}" if r.unit == "entries/s" else f"{r.value:,.1f}"
        unit = f" {r.unit}" if r.unit else ""
        lines.append(
            f"| {r.benchmark} | {r.schedulers} | {r.metric} | {value}{unit} | {r.target} "
            f"| {'yes' if r.ok else '**no**'} |"
        )
    lines += ["", "Details:", "", "```json", json.dumps(report.details, indent=2), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--child-scheduler", nargs=2, metavar=("URL", "PREFIX"), help="internal")
    args = parser.parse_args()
    if args.child_scheduler:
        child_scheduler(*args.child_scheduler)
        return

    entries = 10_000 if args.quick else 100_000
    tasks, spread = (100, 2.0) if args.quick else (500, 10.0)
    cron_seconds = 5 if args.quick else 20
    report = Report()
    with RedisProcess() as redis_proc:
        url = redis_proc.url
        with redis_proc.client() as probe:
            redis_version = str(probe.info("server")["redis_version"])
        print(f"private redis-server {redis_version} at {url}", flush=True)

        async def run_all() -> None:
            for n in (1, 3):
                await bench_promotion(url, n, entries, report)
            for n in (1, 3):
                await bench_delayed(url, n, tasks, spread, report)
            for n in (1, 3):
                await bench_cron(url, n, cron_seconds, report)

        run_async(run_all)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "redis": f"redis-server {redis_version}",
        "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "quick": args.quick,
    }
    text = markdown(report, meta)
    print()
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"scheduler{suffix}.md").write_text(text)
    payload = {"meta": meta, "rows": [asdict(r) for r in report.rows], "details": report.details}
    (RESULTS / f"scheduler{suffix}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
