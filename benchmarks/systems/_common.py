"""What every adapter shares: the benchmark task's bookkeeping in the worker, the event channel to
the orchestrator, and the producer-side workloads. Standard library only: this module runs in the
project's virtual environment and in the peers' ones.

The orchestrator (``benchmarks/run.py``) passes everything through the environment, so a worker
started by a system's own command line (``taskiq worker ...``) gets it too:

``BENCH_REDIS_URL``     the private redis-server
``BENCH_EVENTS``        path of the orchestrator's UNIX datagram socket (events: ready, done)
``BENCH_EXPECT``        how many task executions the worker should see before it reports ``done``
``BENCH_LATENCY_FILE``  where the worker writes its pickup latencies when it is done (optional)
``BENCH_CONCURRENCY``   tasks at once in the worker (100)
``BENCH_POLL``          poll interval in seconds, for the systems that poll (worker or result wait)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from array import array
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
RESULT_PREFIX = "BENCH_RESULT "
RESULT_TIMEOUT = 60.0


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "100"))


def poll_interval() -> float:
    return float(os.environ.get("BENCH_POLL", "0.005"))


def quiet_logging() -> None:
    """The same for every system: warnings and errors only (per-task INFO lines would dominate)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run under uvloop when it is installed (it is, in every benchmark environment)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - every environment here has it
        return asyncio.run(main())
    return uvloop.run(main())


# --------------------------------------------------------------------------------------------
# worker side


class Recorder:
    """Counts task executions in the worker process and tells the orchestrator when it is done."""

    def __init__(self) -> None:
        self.expect = int(os.environ.get("BENCH_EXPECT", "0"))
        self.count = 0
        self.first_start = 0.0
        self.latencies = array("d")
        self._path = os.environ.get("BENCH_EVENTS", "")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self._path else None
        self._ready_sent = False

    def emit(self, event: str, **fields: Any) -> None:
        if self._sock is None:
            return
        payload = {"event": event, "pid": os.getpid(), "t": time.time(), **fields}
        payload["cpu"] = time.process_time()
        try:
            self._sock.sendto(json.dumps(payload).encode(), self._path)
        except OSError as exc:  # the orchestrator is gone: nothing to report to
            print(f"bench: cannot report {event!r}: {exc}", file=sys.stderr)

    def ready(self) -> None:
        """Call once the worker is connected and about to consume (imports and set-up are done)."""
        if not self._ready_sent:
            self._ready_sent = True
            self.emit("ready")

    def started(self, sent: float) -> None:
        now = time.time()
        if not self.first_start:
            self.first_start = now
        self.latencies.append(now - sent)

    def finished(self) -> None:
        self.count += 1
        if self.count == self.expect:
            path = os.environ.get("BENCH_LATENCY_FILE")
            if path:
                with open(path, "w") as f:
                    json.dump(self.latencies.tolist(), f)
            self.emit("done", n=self.count, first_start=self.first_start)


_recorder: Recorder | None = None


def recorder() -> Recorder:
    global _recorder
    if _recorder is None:
        _recorder = Recorder()
    return _recorder


async def task_body(sent: float, sleep: float) -> float:
    """The benchmark task, identical for every system: note the pickup latency, optionally sleep,
    count the execution; return ``sent`` so a round trip can check it got its own result."""
    rec = recorder()
    rec.started(sent)
    if sleep > 0:
        await asyncio.sleep(sleep)
    rec.finished()
    return sent


# --------------------------------------------------------------------------------------------
# producer side


class Client(Protocol):
    """What an adapter implements for the producer: each system's own sending and result API."""

    batch_api: str  # how send_batch sends, for the report ("send_tasks", "gather(100 x send)")

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, sent: float, sleep: float) -> Any: ...

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None: ...

    async def result(self, handle: Any, timeout: float) -> Any: ...


async def gather_sends(client: Client, items: Sequence[tuple[float, float]]) -> None:
    """The batched send of a system without a bulk API: the whole batch in flight at once."""
    await asyncio.gather(*(client.send(sent, sleep) for sent, sleep in items))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [x * 1000 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "max_ms": max(ms) if ms else float("nan"),
    }


async def _fill(client: Client, n: int, sleep: float, batch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        now = time.time()
        await client.send_batch([(now, sleep)] * min(batch, n - start))
    return {"n": n, "seconds": time.perf_counter() - t0}


async def _stream(client: Client, n: int, senders: int) -> dict[str, Any]:
    left = n
    first = time.time()

    async def sender() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.send(time.time(), 0.0)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return {"n": n, "t_first_send": first, "t_last_sent": time.time(), "senders": senders}


async def _roundtrip(client: Client, n: int, warmup: int) -> dict[str, Any]:
    lat: list[float] = []
    wrong = 0
    for i in range(warmup + n):
        sent = time.time()
        t0 = time.perf_counter()
        handle = await client.send(sent, 0.0)
        value = await client.result(handle, RESULT_TIMEOUT)
        elapsed = time.perf_counter() - t0
        if value != sent:
            wrong += 1
        if i >= warmup:
            lat.append(elapsed)
    return {"warmup": warmup, "wrong_results": wrong, **latency_summary(lat)}


async def _paced(client: Client, n: int, interval: float) -> dict[str, Any]:
    start = time.perf_counter()
    late = 0
    for i in range(n):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
        await client.send(time.time(), 0.0)
    return {"n": n, "interval": interval, "late_sends": late}


async def _enqueue(client: Client, n: int, mode: str, batch: int) -> dict[str, Any]:
    now = time.time()
    t0 = time.perf_counter()
    if mode == "single":
        for _ in range(n):
            await client.send(now, 0.0)
    else:
        for start in range(0, n, batch):
            await client.send_batch([(now, 0.0)] * min(batch, n - start))
    seconds = time.perf_counter() - t0
    return {"n": n, "mode": mode, "seconds": seconds, "per_second": n / seconds}


async def _produce(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    await client.open()
    try:
        if args.workload == "fill":
            out = await _fill(client, args.n, args.sleep, args.batch)
        elif args.workload == "stream":
            out = await _stream(client, args.n, args.senders)
        elif args.workload == "roundtrip":
            out = await _roundtrip(client, args.n, args.warmup)
        elif args.workload == "paced":
            out = await _paced(client, args.n, args.interval)
        elif args.workload == "enqueue":
            out = await _enqueue(client, args.n, args.mode, args.batch)
        else:  # pragma: no cover - argparse restricts the choices
            raise ValueError(args.workload)
    finally:
        await client.close()
    out["batch_api"] = client.batch_api
    out.update(getattr(client, "stats", {}))  # anything an adapter counted (e.g. saq's misses)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="a benchmark adapter (run by benchmarks/run.py)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run one worker until SIGTERM")
    prod = sub.add_parser("produce", help="run one producer workload and print its JSON")
    prod.add_argument("workload", choices=["fill", "stream", "roundtrip", "paced", "enqueue"])
    prod.add_argument("--n", type=int, default=1000)
    prod.add_argument("--sleep", type=float, default=0.0)
    prod.add_argument("--batch", type=int, default=100)
    prod.add_argument("--senders", type=int, default=50)
    prod.add_argument("--warmup", type=int, default=50)
    prod.add_argument("--interval", type=float, default=0.005)
    prod.add_argument("--mode", choices=["single", "batch"], default="single")
    return p


def main(worker: Callable[[], None], client: Callable[[], Client]) -> None:
    """The command line of every adapter: ``worker`` or ``produce WORKLOAD [options]``."""
    args = _parser().parse_args()
    quiet_logging()
    if args.command == "worker":
        worker()
        return
    out = run_async(lambda: _produce(client(), args))
    print(RESULT_PREFIX + json.dumps(out), flush=True)
