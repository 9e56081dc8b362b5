"""Benchmark vecna_async against arq, saq, taskiq and streaq, side by side, on one private Redis.

    python benchmarks/run.py [--repeats 3] [--systems vecna,arq,...] [--workloads drain,...]
                             [--quick] [--profile SYSTEM]

Run it with the project's virtual environment. It builds the peers' virtual environments under
``benchmarks/.peers-venv/`` from the pinned requirement files, starts a private redis-server on a
free loopback port, runs every (workload, repeat, system) on a FLUSHALL'd Redis with one worker
process per system, and writes ``benchmarks/results/latest.{md,json,png}`` (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import redis
import report

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp" / "compare"  # gitignored (results/tmp/); logs, sockets, profiles
PEERS_VENVS = BENCH / ".peers-venv"
CONCURRENCY = 100
POLL_SECONDS = 0.005


# ----------------------------------------------------------------------------------------------
# environments and systems


@dataclass(frozen=True)
class Env:
    name: str
    requirements: Path | None  # None: the project's own venv (this interpreter)

    @property
    def dir(self) -> Path:
        return PEERS_VENVS / self.name

    @property
    def python(self) -> str:
        return sys.executable if self.requirements is None else str(self.dir / "bin" / "python")


ENVS = {
    "project": Env("project", None),
    "peers": Env("peers", BENCH / "requirements-peers.txt"),
    "taskiq": Env("taskiq", BENCH / "requirements-peers-taskiq.txt"),
}


@dataclass(frozen=True)
class System:
    name: str
    module: str
    env: str
    role: str  # "vecna", "peer" or "floor"
    delivery: str
    results: str
    notes: str
    extra_env: dict[str, str] = field(default_factory=dict)
    packages: tuple[str, ...] = ()


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in [
        System(
            "vecna", "benchmarks.systems.vecna", "project", "vecna",
            "at-least-once: Lua claim of up to 100 with leases + owner tokens; token-fenced batched"
            " acks (one Lua call per batch)",
            "AsyncResult.get(): state written in the ack script, one PUBLISH per batch to the"
            " sender's channel, one shared pub/sub listener per Server",
            "Server.new_worker(concurrency=100).launch() under anyio+uvloop (as the CLI runs it);"
            " batches: send_tasks",
            packages=("vecna_async", "redis", "hiredis", "msgspec", "anyio", "uvloop"),
        ),
        System(
            "arq", "benchmarks.systems.arq", "peers", "peer",
            "at-least-once ('pessimistic execution': a job leaves the queue only when it finished;"
            " an in-progress key guards it; WATCH/MULTI per job start)",
            "Job.result(poll_delay=5 ms): polls GET+ZSCORE",
            "Worker(max_jobs=100, poll_delay=5 ms; default 0.5 s) on uvloop; no bulk enqueue:"
            " batches are 100 concurrent enqueue_job",
            packages=("arq", "redis", "hiredis", "uvloop"),
        ),
        System(
            "saq", "benchmarks.systems.saq", "peers", "peer",
            "at-most-once by default (BLMOVE to an active list; a job of a dead worker is swept to"
            " ABORTED, re-run only when retries > 1)",
            "Job.refresh(until_complete=...): waits on saq's pub/sub multiplexer (which closes when"
            " its last listener leaves, so a sequential caller now and then misses the notice;"
            " the adapter then re-reads after 1 s: see missed_completion_notices)",
            "Worker(concurrency=100) on uvloop, 100 slots each blocked in BLMOVE; no bulk enqueue:"
            " batches are 100 concurrent queue.enqueue",
            packages=("saq", "redis", "hiredis", "uvloop"),
        ),
        System(
            "taskiq", "benchmarks.systems.taskiq", "taskiq", "peer",
            "at-least-once (RedisStreamBroker: XREADGROUP, XACK after the result is saved,"
            " XAUTOCLAIM after 10 min idle)",
            "RedisAsyncResultBackend + wait_result(check_interval=5 ms; default 0.2 s): polls"
            " EXISTS then GET",
            "taskiq worker CLI, --workers 1 --max-async-tasks 100 (uvloop by itself); no bulk"
            " enqueue: batches are 100 concurrent kiq",
            extra_env={"BENCH_TASKIQ_BROKER": "stream"},
            packages=("taskiq", "taskiq-redis", "redis", "hiredis", "uvloop", "pydantic"),
        ),
        System(
            "taskiq-list", "benchmarks.systems.taskiq", "taskiq", "peer",
            "at-most-once (ListQueueBroker: LPUSH/BRPOP, no acknowledgement)",
            "RedisAsyncResultBackend + wait_result(check_interval=5 ms)",
            "as taskiq, with ListQueueBroker (not in the default set)",
            extra_env={"BENCH_TASKIQ_BROKER": "list"},
            packages=("taskiq", "taskiq-redis", "redis", "hiredis", "uvloop", "pydantic"),
        ),
        System(
            "streaq", "benchmarks.systems.streaq", "peers", "peer",
            "at-least-once (Redis stream + consumer group; XACK+XDEL when finished; a stalled"
            " worker's messages are reclaimed after idle_timeout, 60 s)",
            "Task.result(): a pub/sub subscription per wait, then GET; leaving coredis 6.9's"
            " PubSub context takes ~100 ms here (measured alone), which sets its round trip",
            "Worker(concurrency=100).run_sync() with anyio use_uvloop; batches: enqueue_many",
            packages=("streaq", "coredis", "anyio", "uvloop"),
        ),
        System(
            "bare-redis", "benchmarks.systems.bare_redis", "project", "floor",
            "at-most-once (LPUSH / RPOP count / BRPOP; nothing tracks a popped message)",
            "SET result EX + one PUBLISH per batch; one shared subscription",
            "no framework: redis.asyncio + msgspec + asyncio, 100 slots",
            packages=("redis", "hiredis", "msgspec", "uvloop"),
        ),
        System(
            "bare-alo", "benchmarks.systems.bare_alo", "project", "floor",
            "at-least-once (one Lua claim of up to 100 with leases + owner tokens; one"
            " token-checking Lua ack per batch that also writes the results)",
            "written in the ack script + one PUBLISH per batch; one shared subscription",
            "no framework: the design vecna implements, with nothing else",
            packages=("redis", "hiredis", "msgspec", "uvloop"),
        ),
    ]
}  # fmt: skip
DEFAULT_SYSTEMS = ["vecna", "arq", "saq", "taskiq", "streaq", "bare-redis", "bare-alo"]


@dataclass(frozen=True)
class Sizes:
    drain: int
    concurrent: int
    senders: int
    roundtrip: int
    roundtrip_warmup: int
    pickup: int
    pickup_interval: float
    sleep_tasks: int
    sleep_seconds: float
    enqueue: int


FULL = Sizes(20_000, 20_000, 50, 2_000, 50, 1_000, 0.005, 2_000, 0.1, 10_000)
QUICK = Sizes(2_000, 2_000, 50, 50, 5, 200, 0.005, 500, 0.1, 2_000)
WORKLOADS = ["drain", "concurrent", "roundtrip", "pickup", "sleep", "enqueue"]
ALIASES = {"cpu": "drain", "memory": "drain", "rss": "drain", "throughput": "enqueue"}


# ----------------------------------------------------------------------------------------------
# set-up: venvs, redis-server, facts


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_env(env: Env) -> None:
    """Create or refresh a peers' venv when its requirements file changed."""
    if env.requirements is None:
        return
    digest = hashlib.sha256(env.requirements.read_bytes()).hexdigest()
    stamp = env.dir / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and Path(env.python).exists():
        return
    log(f"building {env.dir.relative_to(ROOT)} from {env.requirements.name}")
    shutil.rmtree(env.dir, ignore_errors=True)
    env.dir.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(env.dir)], check=True)
    pip = [env.python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(env.requirements)], check=True)
    stamp.write_text(digest + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on a free loopback port, nothing on disk."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port)

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        cmd += ["--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def flush(self) -> None:
        self.client.flushall()
        self.client.script_flush()
        self.client.config_resetstat()

    def cpu(self) -> float:
        """CPU seconds the redis-server process used so far (user + system)."""
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def commandstats(self) -> dict[str, dict[str, float]]:
        """INFO commandstats: calls and usec per command since the last flush (commands run
        inside a Lua script are counted on their own line too)."""
        stats: dict[str, dict[str, float]] = {}
        for name, row in self.client.info("commandstats").items():
            stats[name.removeprefix("cmdstat_")] = {"calls": row["calls"], "usec": row["usec"]}
        return stats

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.client.info("server")
        return info

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def packages_of(env: Env, names: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [env.python, "-c", code, *names], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def git(*args: str) -> str:
    """Read-only git queries (commit, dirty state) for the record."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def vecna_state() -> str:
    """vecna_async's code as run: HEAD plus a digest of any uncommitted change to it (the tree
    may change during a long run when others work in it)."""
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--", "vecna_async"], cwd=ROOT, capture_output=True
    ).stdout
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "vecna_async")
    head = git("rev-parse", "--short", "HEAD")
    if not diff and not untracked:
        return head
    digest = hashlib.sha256(diff + untracked.encode()).hexdigest()[:10]
    return f"{head}+dirty:{digest}"


def snapshot_vecna(ref: str) -> tuple[Path, str]:
    """Freeze the vecna_async code this run measures, so that work going on in the tree during a
    long run cannot change it halfway: ``worktree`` copies the working tree as it is now (with
    uncommitted changes), any other value is a git revision exported with ``git archive``
    (read-only). Returns the directory to run from and a description of the code."""
    dest = TMP / "vecna-snapshot"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if ref == "worktree":
        state = vecna_state()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "vecna_async", dest / "vecna_async", ignore=ignore)
    else:
        archive = subprocess.run(
            ["git", "archive", ref, "vecna_async"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        state = git("rev-parse", "--short", ref)
    (dest / "benchmarks").symlink_to(BENCH)  # the adapters, from the real tree
    return dest, state


def machine_facts(server: RedisServer, systems: list[System]) -> dict[str, Any]:
    cpu_model = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = server.info()
    envs: dict[str, dict[str, str]] = {}
    for name in sorted({s.env for s in systems}):
        wanted = sorted({p for s in systems if s.env == name for p in s.packages})
        envs[name] = packages_of(ENVS[name], [*wanted, "psutil"])
    vecna_changed = git("status", "--porcelain", "--", "vecna_async").splitlines()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "redis_version": info.get("redis_version"),
        "redis_server": f"private redis-server on 127.0.0.1:{server.port}, no persistence",
        "python_orchestrator": platform.python_version(),
        "environments": envs,
        "vecna_commit": git("rev-parse", "--short", "HEAD"),
        "vecna_uncommitted_changes": [ln.split(maxsplit=1)[-1] for ln in vecna_changed] or "none",
    }


def redis_benchmark(server: RedisServer, requests: int) -> dict[str, Any]:
    """``redis-benchmark -q -t set,get,lpush,rpop -n 100000`` with -P 1 and -P 16."""
    out: dict[str, Any] = {}
    for pipeline in (1, 16):
        cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-q"]
        cmd += ["-t", "set,get,lpush,rpop", "-n", str(requests), "-P", str(pipeline)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        rows: dict[str, dict[str, float]] = {}
        for line in done.stdout.replace("\r", "\n").splitlines():
            if "requests per second" not in line:
                continue
            name, _, rest = line.partition(":")
            rps = float(rest.split("requests per second")[0].strip())
            row = {"requests_per_second": rps}
            if "p50=" in rest:
                row["p50_ms"] = float(rest.split("p50=")[1].split()[0])
            rows[name.strip()] = row
        out[f"P{pipeline}"] = {"command": " ".join(cmd), "results": rows}
        server.flush()
    return out


# ----------------------------------------------------------------------------------------------
# processes and events


class RunFailed(Exception):
    pass


class Events:
    """The orchestrator's end of the UNIX datagram socket the workers report on."""

    def __init__(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(65536)

    def wait(
        self, kind: str, timeout: float, proc: subprocess.Popen[bytes], watch: Watch | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFailed(f"no {kind!r} event within {timeout:.0f}s")
            for _ in self.selector.select(min(left, 0.1)):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        event: dict[str, Any] = json.loads(self.sock.recv(65536))
                        if event["event"] == kind:
                            return event
            if watch is not None:
                watch.sample()
            if proc.poll() is not None:
                raise RunFailed(f"worker exited with {proc.returncode} before {kind!r}")

    def close(self) -> None:
        self.selector.close()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Watch:
    """CPU time and RSS of the process that runs the tasks (psutil and /proc)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_sampled = 0

    def cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        rss: int = self.proc.memory_info().rss
        return rss

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak_sampled = max(self.peak_sampled, self.rss())

    def hwm(self) -> int:
        """Peak RSS as the kernel counts it (VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.peak_sampled


class Harness:
    def __init__(
        self, server: RedisServer, events: Events, sizes: Sizes, profile: str, vecna_dir: Path
    ) -> None:
        self.server = server
        self.events = events
        self.sizes = sizes
        self.profile = profile
        self.vecna_dir = vecna_dir  # the snapshot of vecna_async this run measures
        self.run_id = 0
        self.workload = ""

    def cwd(self, system: System) -> Path:
        """vecna runs from its snapshot (cwd and PYTHONPATH come before the editable install)."""
        return self.vecna_dir if system.role == "vecna" else ROOT

    def env(self, system: System, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        env.update(
            PYTHONPATH=str(self.cwd(system)),
            PYTHONUNBUFFERED="1",
            BENCH_REDIS_URL=self.server.url,
            BENCH_EVENTS=str(self.events.path),
            BENCH_CONCURRENCY=str(CONCURRENCY),
            BENCH_POLL=str(POLL_SECONDS),
        )
        env.update(system.extra_env)
        env.update(extra)
        return env

    def logfile(self, system: System, what: str) -> Path:
        return TMP / f"{self.run_id:03d}-{system.name}-{what}.log"

    @contextlib.contextmanager
    def worker(self, system: System, expect: int, **extra: str) -> Iterator[WorkerRun]:
        env = self.env(system, BENCH_EXPECT=str(expect), **extra)
        path = self.logfile(system, "worker")
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                [ENVS[system.env].python, "-m", system.module, "worker"],
                cwd=self.cwd(system),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = WorkerRun(self, proc, path)
        try:
            yield run
        finally:
            run.stop()

    def produce(self, system: System, *args: str, timeout: float = 600) -> dict[str, Any]:
        return self.start_producer(system, *args).finish(timeout)

    def start_producer(self, system: System, *args: str) -> ProducerRun:
        path = self.logfile(system, f"produce-{args[0]}")
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                [ENVS[system.env].python, "-m", system.module, "produce", *args],
                cwd=self.cwd(system),
                env=self.env(system),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return ProducerRun(proc, path)

    # -- workloads -------------------------------------------------------------------------------

    def run(self, workload: str, system: System) -> dict[str, Any]:
        self.run_id += 1
        self.workload = workload
        self.server.flush()
        self.events.drain()
        time.sleep(0.2)  # let the previous run's processes go away
        return dict(getattr(self, f"w_{workload}")(system))

    def _drain_like(self, system: System, n: int, sleep: float) -> dict[str, Any]:
        fill = self.produce(system, "fill", "--n", str(n), "--sleep", str(sleep), "--batch", "100")
        budget = 60 + n / 100 * max(sleep, 0.01) * 10
        with self.worker(system, expect=n) as w:
            ready = w.wait("ready", 120)
            watch = Watch(ready["pid"])
            cpu0, rss0, rcpu0 = watch.cpu(), watch.rss(), self.server.cpu()
            prof = self.start_profile(system, ready["pid"])
            done = w.wait("done", budget, watch)
            cpu1, rcpu1 = watch.cpu(), self.server.cpu()
            hwm = watch.hwm()
            self.stop_profile(prof)
        seconds = done["t"] - ready["t"]
        return {
            "n": n,
            "seconds": seconds,
            "per_second": n / seconds,
            "first_task_after_ready_s": done["first_start"] - ready["t"],
            "cpu_us_per_task": (cpu1 - cpu0) * 1e6 / n,
            "cpu_us_per_task_self_reported": (done["cpu"] - ready["cpu"]) * 1e6 / n,
            "redis_cpu_us_per_task": (rcpu1 - rcpu0) * 1e6 / n,
            "rss_ready_mib": rss0 / 2**20,
            "rss_peak_mib": hwm / 2**20,
            "fill_seconds": fill["seconds"],
            "redis_commandstats": self.server.commandstats(),
        }

    def w_drain(self, system: System) -> dict[str, Any]:
        return self._drain_like(system, self.sizes.drain, 0.0)

    def w_sleep(self, system: System) -> dict[str, Any]:
        s = self.sizes
        out = self._drain_like(system, s.sleep_tasks, s.sleep_seconds)
        out["ideal_seconds"] = s.sleep_tasks / CONCURRENCY * s.sleep_seconds
        return out

    def w_concurrent(self, system: System) -> dict[str, Any]:
        n = self.sizes.concurrent
        with self.worker(system, expect=n) as w:
            ready = w.wait("ready", 120)
            watch = Watch(ready["pid"])
            cpu0, rcpu0 = watch.cpu(), self.server.cpu()
            prof = self.start_profile(system, ready["pid"])
            producer = self.start_producer(
                system, "stream", "--n", str(n), "--senders", str(self.sizes.senders)
            )
            try:
                done = w.wait("done", 60 + n / 50, watch)
            finally:
                sent = producer.finish(600)
            cpu1, rcpu1 = watch.cpu(), self.server.cpu()
            hwm = watch.hwm()
            self.stop_profile(prof)
        seconds = done["t"] - sent["t_first_send"]
        return {
            "n": n,
            "seconds": seconds,
            "per_second": n / seconds,
            "producer_per_second": n / (sent["t_last_sent"] - sent["t_first_send"]),
            "cpu_us_per_task": (cpu1 - cpu0) * 1e6 / n,
            "redis_cpu_us_per_task": (rcpu1 - rcpu0) * 1e6 / n,
            "rss_peak_mib": hwm / 2**20,
        }

    def w_roundtrip(self, system: System) -> dict[str, Any]:
        s = self.sizes
        with self.worker(system, expect=s.roundtrip + s.roundtrip_warmup) as w:
            w.wait("ready", 120)
            args = ["--n", str(s.roundtrip), "--warmup", str(s.roundtrip_warmup)]
            out = self.produce(system, "roundtrip", *args)
        if out.get("wrong_results"):
            raise RunFailed(f"{out['wrong_results']} round trips returned another task's result")
        return out

    def w_pickup(self, system: System) -> dict[str, Any]:
        s = self.sizes
        lat_file = TMP / f"{self.run_id:03d}-{system.name}-latencies.json"
        with self.worker(system, expect=s.pickup, BENCH_LATENCY_FILE=str(lat_file)) as w:
            w.wait("ready", 120)
            sent = self.produce(
                system, "paced", "--n", str(s.pickup), "--interval", str(s.pickup_interval)
            )
            w.wait("done", 60)
        latencies = json.loads(lat_file.read_text())
        ms = sorted(x * 1000 for x in latencies)
        return {
            "n": len(ms),
            "rate_per_second": 1 / s.pickup_interval,
            "late_sends": sent["late_sends"],
            "p50_ms": pct(ms, 50),
            "p90_ms": pct(ms, 90),
            "p99_ms": pct(ms, 99),
            "max_ms": ms[-1],
        }

    def w_enqueue(self, system: System) -> dict[str, Any]:
        n = self.sizes.enqueue
        rcpu0 = self.server.cpu()
        single = self.produce(system, "enqueue", "--n", str(n), "--mode", "single")
        rcpu1 = self.server.cpu()
        stats = self.server.commandstats()
        self.server.flush()
        batch = self.produce(system, "enqueue", "--n", str(n), "--mode", "batch", "--batch", "100")
        rcpu2 = self.server.cpu()
        return {
            "n": n,
            "single_per_second": single["per_second"],
            "batch_per_second": batch["per_second"],
            "batch_api": batch["batch_api"],
            "redis_cpu_us_per_single_send": (rcpu1 - rcpu0) * 1e6 / n,
            "redis_cpu_us_per_batched_send": (rcpu2 - rcpu1) * 1e6 / n,
            "redis_commandstats_single": stats,
        }

    # -- optional profiling ----------------------------------------------------------------------

    def start_profile(self, system: System, pid: int) -> subprocess.Popen[bytes] | None:
        if system.name != self.profile:
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = TMP / f"profile-{system.name}-{self.workload}.speedscope.json"
        cmd = [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "speedscope"]
        cmd += os.environ.get("BENCH_PYSPY_ARGS", "").split()  # e.g. --native
        cmd += ["--output", str(out), "--nonblocking"]
        log(f"  py-spy recording {system.name} worker {pid} -> {os.path.relpath(out, ROOT)}")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def stop_profile(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


class ProducerRun:
    """A producer process; its result is the last ``BENCH_RESULT`` line it printed."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise RunFailed(f"producer timed out after {timeout:.0f}s") from None
        text = self.log_path.read_text(errors="replace")
        for line in reversed(text.splitlines()):
            if line.startswith("BENCH_RESULT "):
                result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
                return result
        raise RunFailed(f"producer exited {self.proc.returncode} without a result:\n{tail(text)}")


class WorkerRun:
    def __init__(self, harness: Harness, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.harness = harness
        self.proc = proc
        self.log_path = log_path

    def wait(self, kind: str, timeout: float, watch: Watch | None = None) -> dict[str, Any]:
        try:
            return self.harness.events.wait(kind, timeout, self.proc, watch)
        except RunFailed as exc:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RunFailed(f"{exc}; worker log:\n{tail(text)}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            # the leader only: a supervising CLI (taskiq's) forwards it to its children itself
            # and stalls when they get a signal of their own too
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                log("  worker ignored SIGTERM for 20s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # and whatever it started
        self.proc.wait()


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="repeats (default 3; 1 with --quick)")
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated, from: {', '.join(SYSTEMS)}",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from: {', '.join(WORKLOADS)} (cpu, memory: from drain)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 2 min)")
    p.add_argument(
        "--profile", default="", help="py-spy record this worker (drain, sleep, concurrent)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where latest.{md,json,png} go (default: %(default)s)",
    )
    p.add_argument(
        "--vecna-ref",
        default="worktree",
        help="vecna_async code to measure, frozen for the whole run: 'worktree' (a copy of the\n"
        "working tree at start, uncommitted changes included) or a git revision (HEAD, a tag)",
    )
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="run nothing: rebuild latest.{md,png} (and the JSON) from a previous latest.json",
    )
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {unknown}; known: {list(SYSTEMS)}")
    wl = [ALIASES.get(w.strip(), w.strip()) for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in wl if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {WORKLOADS}")
    args.workloads = [w for w in WORKLOADS if w in wl]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def order_for(systems: list[str], repeat: int) -> list[str]:
    """Alternate the order: rotate by the repeat number, reversed on odd repeats."""
    k = repeat % len(systems)
    order = systems[k:] + systems[:k]
    return order[::-1] if repeat % 2 else order


def describe(system: System) -> dict[str, str]:
    return {
        "role": system.role,
        "env": system.env,
        "delivery": system.delivery,
        "results": system.results,
        "notes": system.notes,
    }


def rebuild(path: Path, out: Path) -> int:
    """Re-render a previous run (the system descriptions are refreshed from this file)."""
    old = json.loads(path.read_text())
    systems = {n: describe(SYSTEMS[n]) if n in SYSTEMS else d for n, d in old["systems"].items()}
    data = report.build(
        old["config"], old["machine"], systems, old["runs"], old.get("redis_benchmark", {})
    )
    paths = report.write(data, out)
    log("rewrote " + ", ".join(os.path.relpath(p, ROOT) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rebuild(args.report_only, args.out)
    started = time.monotonic()
    systems = [SYSTEMS[s] for s in args.systems]
    for env_name in sorted({s.env for s in systems}):
        ensure_env(ENVS[env_name])
    if not shutil.which("redis-server"):
        print("redis-server is needed (Debian: apt-get install redis-server)", file=sys.stderr)
        return 2
    TMP.mkdir(parents=True, exist_ok=True)
    for old in [*TMP.glob("[0-9][0-9][0-9]-*"), *TMP.glob("profile-*")]:
        old.unlink()
    sizes = QUICK if args.quick else FULL
    server = RedisServer(TMP)
    server.start()
    events = Events(TMP / "events.sock")
    runs: list[dict[str, Any]] = []
    try:
        log(f"redis-server on port {server.port}; systems: {', '.join(args.systems)}")
        facts = machine_facts(server, systems)
        log("redis-benchmark ...")
        rb = redis_benchmark(server, 20_000 if args.quick else 100_000)
        vecna_dir, vecna_code = snapshot_vecna(args.vecna_ref)
        facts["vecna_measured"] = f"{vecna_code} (--vecna-ref {args.vecna_ref}, frozen at start)"
        log(f"vecna_async measured: {facts['vecna_measured']}")
        harness = Harness(server, events, sizes, args.profile, vecna_dir)
        for workload in args.workloads:
            for repeat in range(args.repeats):
                for name in order_for(args.systems, repeat):
                    system = SYSTEMS[name]
                    t0 = time.monotonic()
                    record: dict[str, Any] = {
                        "workload": workload,
                        "system": name,
                        "repeat": repeat,
                        "loadavg_1m_before": os.getloadavg()[0],
                    }
                    try:
                        record["metrics"] = harness.run(workload, system)
                        record["ok"] = True
                        log(f"{workload:<10} r{repeat} {name:<12} {brief(workload, record)}")
                    except (RunFailed, subprocess.SubprocessError, OSError, psutil.Error) as exc:
                        record["ok"] = False
                        record["error"] = str(exc)
                        log(f"{workload:<10} r{repeat} {name:<12} FAILED: {exc}")
                    record["wall_seconds"] = time.monotonic() - t0
                    runs.append(record)
    finally:
        events.close()
        server.stop()
    config = {
        "argv": sys.argv[1:],
        "repeats": args.repeats,
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "concurrency": CONCURRENCY,
        "poll_seconds": POLL_SECONDS,
        "workloads": args.workloads,
        "systems": args.systems,
        "total_minutes": round((time.monotonic() - started) / 60, 1),
    }
    described = {s.name: describe(s) for s in systems}
    data = report.build(config, facts, described, runs, rb)
    paths = report.write(data, args.out)
    log("wrote " + ", ".join(os.path.relpath(p, ROOT) for p in paths))
    failed = sum(not r["ok"] for r in runs)
    if failed:
        log(f"{failed} run(s) failed (see the report and {TMP.relative_to(ROOT)}/*.log)")
    return 1 if failed == len(runs) else 0


def brief(workload: str, record: dict[str, Any]) -> str:
    m = record["metrics"]
    if workload in ("drain", "concurrent"):
        extra = f", {m['cpu_us_per_task']:.0f} us CPU/task, peak RSS {m['rss_peak_mib']:.0f} MiB"
        return f"{m['per_second']:,.0f} tasks/s ({m['seconds']:.2f}s){extra}"
    if workload == "sleep":
        return f"{m['seconds']:.2f}s (ideal {m['ideal_seconds']:.1f}s)"
    if workload in ("roundtrip", "pickup"):
        return f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms"
    if workload == "enqueue":
        return f"single {m['single_per_second']:,.0f}/s, batch {m['batch_per_second']:,.0f}/s"
    return json.dumps(m)


if __name__ == "__main__":
    sys.exit(main())
