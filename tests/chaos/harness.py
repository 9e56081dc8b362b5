"""The chaos harness: worker processes under a supervisor, a producer that never gives up on a
send, the ledger of runs, and the accounting that turns them into one line per scenario.

* :class:`Workers` starts ``python -m vecna_async worker tests.apps.chaos_app:server`` processes
  and kills, stops, resumes and restarts them, recording every fault it injects (:class:`Fault`)
  with its time and pid.
* :class:`Producer` sends tasks and keeps the ids of the sends that were **accepted**: the call
  returned, or it raised (Redis down, refused, cut off) and reading the task's state afterwards
  shows the message arrived anyway. A send that raised and did not arrive is sent again with the
  same ``Signature`` (same id) until it is accepted (or, with ``resend_blindly``, every send that
  raised is sent again and only a call that returns accepts it).
* :class:`Ledger` reads what ``tests/apps/chaos_app.py`` recorded: which process ran which task
  id when, from start to return.
* :class:`StateWatch` subscribes to the producer's reply channel, where the worker publishes each
  final state it stores: a state stored twice shows up as two publishes.
* :func:`account` reads every accepted id's final state and explains every duplicate run by the
  faults: each run of a task but the last must have been hit by one (its worker SIGKILLed or
  SIGSTOPped while it ran, or Redis unavailable around it). It returns a :class:`Report`, whose
  line (``scenario | in | done | lost | duplicates (cause)``) is printed at the end of the
  session and written to ``tests/chaos/.results/<scenario>.json``.

Waiting is by polling with deadlines that stretch while progress is made; nothing here asserts a
speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis
from anyio.abc import TaskGroup

from tests.support.vecna import worker_env
from vecna_async import Config, RedisConfig, Server, Signature, State, TaskState

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.chaos_app:server"
QUEUE = "vecna_tasks"
RESULTS_DIR = Path(__file__).resolve().parent / ".results"

REPORTS: list[Report] = []
"""Every scenario's report, printed by ``conftest.pytest_terminal_summary``."""


def now_ms() -> int:
    return int(time.time() * 1000)


# -- faults and processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault. ``pid``: the worker process hit (None: Redis itself). ``start_ms`` ..
    ``end_ms``: when it began and ended (a SIGKILL ends when it begins; an outage when Redis
    served again plus a lease, the time a lease taken before it may take to run out)."""

    kind: str
    pid: int | None
    start_ms: int
    end_ms: int


def chaos_env(config: Config, ledger_url: str) -> dict[str, str]:
    """The environment of a chaos_app worker: ``config`` (every RedisConfig field that differs
    from its default, not only those ``worker_env`` sets) and the ledger's URL."""
    env = worker_env(config)
    defaults = RedisConfig()
    for f in msgspec.structs.fields(RedisConfig):
        value = getattr(config.redis, f.name)
        if value != getattr(defaults, f.name) and isinstance(value, str | int | float):
            env[f"VECNA_REDIS_{f.name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    env["CHAOS_LEDGER_URL"] = ledger_url
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Workers:
    """Worker processes of one scenario, and the faults injected into them."""

    def __init__(self, config: Config, ledger_url: str, log_dir: Path) -> None:
        self.env = chaos_env(config, ledger_url)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.faults: list[Fault] = []
        self.crashed: list[Proc] = []
        self._seq = 0

    def start(self, concurrency: int, *extra: str, role: str = "worker") -> Proc:
        self._seq += 1
        name = f"{role}-{self._seq}"
        argv = [sys.executable, "-m", "vecna_async", "worker", APP]
        argv += ["--concurrency", str(concurrency), "--name", name, *extra]
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=ROOT, env=self.env
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def alive(self, role: str = "") -> list[Proc]:
        return [p for p in self.procs if p.alive and p.name.startswith(role)]

    def kill(self, proc: Proc) -> None:
        """SIGKILL ``proc`` (a crash) and reap it."""
        proc.expected_exit = True
        at = now_ms()
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)
        self.faults.append(Fault("SIGKILL", proc.pid, at, at))

    def pause(self, proc: Proc) -> int:
        proc.popen.send_signal(signal.SIGSTOP)
        return now_ms()

    def resume(self, proc: Proc, paused_at: int) -> None:
        proc.popen.send_signal(signal.SIGCONT)
        self.faults.append(Fault("SIGSTOP", proc.pid, paused_at, now_ms()))

    def note_exits(self) -> None:
        """Record workers that died by themselves since the last call: of SIGKILL (a task that
        kills its process: an expected fault) or otherwise (a crash: a fault, and a failure of
        the scenario, see :meth:`unexpected_exits`)."""
        for p in self.procs:
            code = p.popen.poll()
            if code is None or p.expected_exit or p in self.crashed:
                continue
            at = now_ms()
            if code == -signal.SIGKILL:
                p.expected_exit = True
                self.faults.append(Fault("SIGKILL (self)", p.pid, at, at))
            else:
                self.crashed.append(p)
                self.faults.append(Fault("worker crash", p.pid, at, at))

    def unexpected_exits(self) -> list[str]:
        """Workers that exited although nobody killed or stopped them, with the exception that
        ended them (the last line of their log naming one)."""
        self.note_exits()
        return [
            f"{p.name} (pid {p.pid}) exited with {p.popen.returncode}: {last_error(p.log)}"
            for p in self.crashed
        ]

    async def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every live worker and wait for it to drain and exit (SIGKILL at the deadline)."""
        live = self.alive()
        for p in live:
            p.expected_exit = True
            p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await anyio.to_thread.run_sync(p.popen.wait, max(0.0, deadline - time.monotonic()))
            if p.alive:
                p.popen.kill()
            p.popen.wait(10)

    def close(self) -> None:
        for p in self.procs:
            if p.alive:
                p.expected_exit = True
                p.popen.send_signal(signal.SIGCONT)
                p.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(10)
        print(f"--- worker logs: {self.log_dir} ---")
        for p in self.procs:
            noisy = [
                line
                for line in p.log.read_text(errors="replace").splitlines()
                if "WARNING" in line or "ERROR" in line or "Traceback" in line
            ]
            if noisy:
                print(f"--- {p.name} (pid {p.pid}, exit {p.popen.returncode}) ---")
                print("\n".join(noisy[-15:]))


_EXCEPTION_LINE = re.compile(r"^[\s|+]*((?:[\w.]+\.)?\w*(?:Error|Exception|Group)\b.*)$")


def last_error(path: Path) -> str:
    """The last line of a log that names an exception (its type and message), and the worker
    part it escaped from (the last ``vecna_async/worker`` or ``scheduler`` frame above it)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    for i in range(len(lines) - 1, -1, -1):
        found = _EXCEPTION_LINE.match(lines[i])
        if found and not found.group(1).startswith("ExceptionGroup"):
            where = [
                re.sub(r'^File ".*?(vecna_async/[^"]+)", line (\d+), in (\w+)', r"\1:\2 \3", x)
                for x in (line.strip(" |+") for line in lines[:i])
                if x.startswith("File") and ("/worker/" in x or "/scheduler/" in x)
            ]
            return found.group(1) + (f" (escaped from {where[-1]})" if where else "")
    return "\n".join(lines[-5:]) or "(empty log)"


async def kill_storm(
    workers: Workers,
    restart: Callable[[], Proc],
    done: Callable[[], Awaitable[bool]],
    *,
    every: float,
    role: str = "worker",
    min_kills: int = 0,
) -> int:
    """Every ~``every`` seconds SIGKILL a random live ``role`` process and ``restart()`` one,
    until ``done()`` (checked between kills) and at least ``min_kills`` kills. Returns the kills."""
    kills = 0
    rng = random.Random(0xC4A05)
    while kills < min_kills or not await done():
        await anyio.sleep(every * rng.uniform(0.5, 1.5))
        live = workers.alive(role)
        if live:
            workers.kill(rng.choice(live))
            kills += 1
        restart()
    return kills


# -- the producer ---------------------------------------------------------------------------------


class Producer:
    """Sends tasks through ``server`` and keeps the accepted ids (see the module docstring).

    ``checker`` reads states to resolve a send that raised (it may be the same Server, or one
    connected to Redis directly when ``server`` goes through a fault proxy).

    ``resend_blindly``: send again every send that raised, without looking whether it arrived,
    and accept a send only when a call returns. With ``wait_replicas`` a send raises when no
    replica took it in time although the master has it; sending the same id again is then what
    confirms it is durable (the resend of a waiting id enqueues nothing and waits again).
    """

    def __init__(self, server: Server, checker: Server | None = None) -> None:
        self.server = server
        self.checker = checker or server
        self.resend_blindly = False
        self.accepted: dict[str, int] = {}  # id -> when accepted (epoch ms)
        self.errors: list[tuple[int, str, BaseException]] = []  # (when, task id, exception)
        self.resent: Counter[str] = Counter()

    async def send(self, sigs: Sequence[Signature], *, give_up_after: float = 120.0) -> None:
        """Send ``sigs`` (one round trip) until every one is accepted."""
        todo = list(sigs)
        deadline = time.monotonic() + give_up_after
        backoff = 0.05
        while todo:
            try:
                await self.server.send_tasks(todo)
            except Exception as exc:
                at = now_ms()
                self.errors += [(at, str(s.id), exc) for s in todo]
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                if not self.resend_blindly:
                    todo = await self._not_arrived(todo, deadline)
                for s in todo:
                    self.resent[str(s.id)] += 1
                continue
            at = now_ms()
            for s in todo:
                self.accepted[str(s.id)] = at
            return

    async def _not_arrived(self, sigs: list[Signature], deadline: float) -> list[Signature]:
        """Of sends that raised, those whose message is not in Redis (no state at all); the
        others arrived and are accepted. Re-sending one that arrived could run it twice once it
        finished (ids deduplicate only while a message waits), so only these are sent again."""
        missing = []
        for s in sigs:
            task_id = str(s.id)
            state = await self._state(task_id, deadline)
            if state is None:
                missing.append(s)
            else:
                self.accepted[task_id] = now_ms()
        return missing

    async def _state(self, task_id: str, deadline: float) -> TaskState | None:
        while True:
            try:
                return await self.checker.result(task_id).get_state()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.1)

    async def stream(
        self,
        make: Callable[[int], Signature],
        *,
        rate: float,
        stop: anyio.Event,
        batch: int = 1,
        limit: int | None = None,
    ) -> int:
        """Send ``make(i)`` for i = 0, 1, ... at about ``rate`` tasks/s (in batches of ``batch``)
        until ``stop`` is set or ``limit`` tasks were sent; returns how many were sent."""
        i = 0
        began = time.monotonic()
        while not stop.is_set() and (limit is None or i < limit):
            n = batch if limit is None else min(batch, limit - i)
            await self.send([make(i + k) for k in range(n)])
            i += n
            ahead = began + i / rate - time.monotonic()
            if ahead > 0:
                with anyio.move_on_after(ahead):
                    await stop.wait()
        return i


def signature(name: str, *args: Any, prefix: str = "t") -> Signature:
    """A Signature whose id is chosen now and passed as the task's first argument."""
    task_id = f"{prefix}-{os.urandom(8).hex()}"
    return Signature(name, args=[task_id, *args], id=task_id)


# -- the ledger ------------------------------------------------------------------------------------


@dataclass
class Run:
    task_id: str
    pid: int
    start_ms: int
    end_ms: int | None


class Ledger:
    """What the chaos app's tasks recorded under ``prefix`` in the ledger Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def runs(self) -> dict[str, int]:
        raw: dict[Any, Any] = await self.client.hgetall(self.key("runs"))
        return {_text(k): int(v) for k, v in raw.items()}

    async def ended_ids(self) -> int:
        return int(await self.client.hlen(self.key("ended")))

    async def started_ids(self) -> int:
        return int(await self.client.hlen(self.key("runs")))

    async def run_records(self) -> dict[str, list[Run]]:
        """Every run by task id, in start order, each paired with its return (if any)."""
        starts = [_entry(x) for x in await self.client.lrange(self.key("starts"), 0, -1)]
        ends: dict[tuple[str, int], list[int]] = defaultdict(list)
        for task_id, pid, at in (
            _entry(x) for x in await self.client.lrange(self.key("ends"), 0, -1)
        ):
            ends[(task_id, pid)].append(at)
        out: dict[str, list[Run]] = defaultdict(list)
        for task_id, pid, at in sorted(starts, key=lambda e: e[2]):
            returned = ends.get((task_id, pid))
            out[task_id].append(Run(task_id, pid, at, returned.pop(0) if returned else None))
        return dict(out)

    async def gather_results(self, task_id: str) -> list[list[int]]:
        raw = await self.client.lrange(self.key(f"results:{task_id}"), 0, -1)
        return [json.loads(x) for x in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(value: Any) -> tuple[str, int, int]:
    task_id, pid, at = _text(value).split(" ")
    return task_id, int(pid), int(at)


# -- final states on the reply channel -----------------------------------------------------------


class StateWatch:
    """Every final state published on one reply channel, by task id, in arrival order."""

    def __init__(self) -> None:
        self.published: dict[str, list[TaskState]] = defaultdict(list)

    def _feed(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            task_id, _, payload = line.partition(b"\t")
            if task_id and payload:
                state = msgspec.json.decode(payload, type=TaskState)
                if state.is_completed():
                    self.published[task_id.decode()].append(state)

    def stored_more_than_once(self) -> dict[str, list[TaskState]]:
        return {k: v for k, v in self.published.items() if len(v) > 1}


@asynccontextmanager
async def watching_states(url: str, channel: str) -> AsyncIterator[StateWatch]:
    """Subscribe (directly, never through a fault proxy) while the block runs."""
    watch = StateWatch()
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=5)  # the subscribe confirmation: listening from here on

    stopping = anyio.Event()

    async def read() -> None:
        # after the block ends, read on until a quiet moment: what was published before is in
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None:
                if msg.get("type") == "message":
                    watch._feed(msg["data"])
            elif stopping.is_set():
                return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            try:
                yield watch
            finally:
                stopping.set()
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()


# -- waiting and accounting ----------------------------------------------------------------------


async def final_states(checker: Server, ids: Iterable[str]) -> dict[str, TaskState | None]:
    """The current state of every id (None: none stored), read 200 at a time."""
    out: dict[str, TaskState | None] = {}
    id_list = list(ids)
    for i in range(0, len(id_list), 200):
        chunk = id_list[i : i + 200]
        states: list[TaskState | None] = [None] * len(chunk)

        async def one(k: int, task_id: str, states: list[TaskState | None] = states) -> None:
            for attempt in range(50):
                try:
                    states[k] = await checker.result(task_id).get_state()
                    return
                except Exception:
                    if attempt == 49:
                        raise
                    await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            for k, task_id in enumerate(chunk):
                tg.start_soon(one, k, task_id)
        out.update(zip(chunk, states, strict=True))
    return out


async def wait_until_final(
    checker: Server, ids: Iterable[str], ledger: Ledger, *, stall: float = 20.0
) -> dict[str, TaskState | None]:
    """Wait until every id has a final state, as long as the ledger or the states show progress
    at least every ``stall`` seconds; returns the last states read (the caller judges them)."""
    remaining = set(ids)
    states: dict[str, TaskState | None] = {}
    last_progress = time.monotonic()
    last_mark: tuple[int, int] = (-1, -1)
    while True:
        mark = (await ledger.ended_ids(), await ledger.started_ids())
        if mark != last_mark:
            last_mark, last_progress = mark, time.monotonic()
        if mark[0] >= len(remaining) or time.monotonic() - last_progress > stall / 2:
            fresh = await final_states(checker, remaining)
            states.update(fresh)
            done = {k for k, v in fresh.items() if v is not None and v.is_completed()}
            if done:
                last_progress = time.monotonic()
            remaining -= done
            if not remaining:
                return states
        if time.monotonic() - last_progress > stall:
            return states
        await anyio.sleep(0.25)


@dataclass
class Report:
    scenario: str
    accepted: int
    done: int
    lost: list[str]
    duplicates: dict[str, str]  # task id -> cause ("UNEXPLAINED: ..." if none)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # e.g. a worker that died by itself

    @property
    def unexplained(self) -> dict[str, str]:
        return {k: v for k, v in self.duplicates.items() if v.startswith("UNEXPLAINED")}

    def line(self) -> str:
        causes = Counter(v.split(":")[0] for v in self.duplicates.values())
        cause = ", ".join(f"{n} {c}" for c, n in sorted(causes.items())) or "-"
        return (
            f"{self.scenario} | {self.accepted} | {self.done} | {len(self.lost)} | "
            f"{len(self.duplicates)} ({cause})"
        )

    def save(self) -> Path:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{self.scenario}.json"
        data = asdict(self)
        data["line"] = self.line()
        data["lost"] = self.lost[:100]
        data["lost_count"] = len(self.lost)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def assert_delivered(self) -> None:
        """Nothing lost; every duplicate run explained by a fault."""
        problems = []
        if self.lost:
            problems.append(f"{len(self.lost)} accepted task(s) lost, e.g. {self.lost[:5]}")
        for task_id, why in list(self.unexplained.items())[:10]:
            problems.append(f"duplicate run of {task_id} not explained by any fault: {why}")
        problems += self.failures
        assert not problems, "\n".join([self.line(), *problems, *self.notes])


def _hit(run: Run, fault: Fault, lease_ms: int) -> bool:
    if fault.pid is not None:
        return run.pid == fault.pid and run.start_ms <= fault.end_ms
    # Redis unavailable or refusing: a run in flight around it (or one whose settle came just
    # before it: a settle follows its run's return by up to a lease) may have lost its outcome.
    return run.start_ms <= fault.end_ms and (
        run.end_ms is None or run.end_ms >= fault.start_ms - lease_ms
    )


def explain(runs: list[Run], faults: Sequence[Fault], lease_ms: int) -> str:
    """Why a task ran ``len(runs)`` times: every run but the last must have been hit by a fault."""
    causes = []
    for run in runs[:-1]:
        hits = [f for f in faults if _hit(run, f, lease_ms)]
        if not hits:
            detail = ", ".join(
                f"pid {r.pid} {r.start_ms}..{r.end_ms if r.end_ms is not None else 'no return'}"
                for r in runs
            )
            return f"UNEXPLAINED: runs {detail}"
        causes.append(hits[0].kind)
    return Counter(causes).most_common(1)[0][0]


async def account(
    scenario: str,
    accepted: Iterable[str],
    checker: Server,
    ledger: Ledger,
    faults: Sequence[Fault],
    *,
    lease_timeout: float,
    began: float,
    expect: Callable[[str, TaskState | None], bool] | None = None,
    states: dict[str, TaskState | None] | None = None,
    notes: Sequence[str] = (),
    failures: Sequence[str] = (),
    accepted_at: dict[str, int] | None = None,
) -> Report:
    """The scenario's report: ``expect(id, state)`` says whether a task ended as it should
    (default: SUCCESS); the others are lost. ``states`` skips reading them again."""
    ids = list(accepted)
    if states is None or set(ids) - set(states):
        states = await final_states(checker, ids)

    def ok(task_id: str, state: TaskState | None) -> bool:
        if expect is not None:
            return expect(task_id, state)
        return state is not None and state.state is State.SUCCESS

    lost = [i for i in ids if not ok(i, states.get(i))]
    records = await ledger.run_records()
    lease_ms = int(lease_timeout * 1000)
    duplicates = {
        task_id: explain(runs, faults, lease_ms)
        for task_id, runs in records.items()
        if len(runs) > 1
    }
    report = Report(
        scenario,
        len(ids),
        len(ids) - len(lost),
        lost,
        duplicates,
        list(notes),
        round(time.monotonic() - began, 1),
        list(failures),
    )
    never_ran = [i for i in lost if i not in records]
    if lost:
        report.notes.append(
            f"lost: {len(never_ran)} never ran; the others ran but their state is "
            + str(Counter(_state_name(states.get(i)) for i in lost if i in records))
        )
    vanished = [i for i in lost if states.get(i) is None and accepted_at and i in accepted_at]
    if vanished and accepted_at is not None:
        # no message, no state: Redis lost the accepted send itself
        when = sorted(accepted_at[i] for i in vanished)
        around = ", ".join(
            f"{f.kind} at {f.start_ms}: {(when[0] - f.start_ms) / 1000:+.2f}s.."
            f"{(when[-1] - f.start_ms) / 1000:+.2f}s"
            for f in faults
            if f.pid is None
        )
        ran = sum(1 for i in vanished if i in records)
        report.notes.append(
            f"{len(vanished)} accepted send(s) left no trace in Redis (no message, no state; "
            f"{ran} of them had run), accepted {around or f'from {when[0]} to {when[-1]}'}"
        )
    path = report.save()
    REPORTS.append(report)
    print(report.line())
    print(f"(details: {path})")
    return report


def _state_name(state: TaskState | None) -> str:
    return "none" if state is None else state.state.value


# -- one scenario's parts ------------------------------------------------------------------------


def chaos_config(broker: str, prefix: str, **redis: Any) -> Config:
    """Short leases and polls (every fault shows within seconds); ``redis`` overrides fields."""
    fields: dict[str, Any] = {
        "key_prefix": prefix,
        "lease_timeout": 2.0,
        "heartbeat_interval": 0.5,
        "normal_tasks_poll_period": 500,
        "delayed_tasks_poll_period": 500,
        "connect_timeout": 2.0,
        **redis,
    }
    return Config(
        broker=broker, results_expire_in=3600, shutdown_grace=5.0, redis=RedisConfig(**fields)
    )


@dataclass
class Chaos:
    """What a scenario works with; see :func:`scenario`."""

    name: str
    config: Config
    workers: Workers
    server: Server  # the producer's Server (maybe through a fault proxy)
    checker: Server  # reads states directly from the broker
    producer: Producer
    ledger: Ledger
    began: float
    background: TaskGroup
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # problems beyond lost and duplicated
    stopping: anyio.Event = field(default_factory=anyio.Event)

    def supervise(self, n: int, concurrency: int, *extra: str) -> None:
        """Start ``n`` workers and keep ``n`` alive until the scenario ends, as ``--processes``
        would: one that dies is recorded (a crash still fails the scenario) and replaced."""
        for _ in range(n):
            self.workers.start(concurrency, *extra)

        def start() -> Proc:
            return self.workers.start(concurrency, *extra)

        self.background.start_soon(keep_alive, self.workers, n, start, self.stopping)

    async def account(self, accepted: Iterable[str], **kwargs: Any) -> Report:
        self.workers.note_exits()
        notes = list(self.notes)
        if self.producer.errors:
            kinds = Counter(type(e).__name__ for _, _, e in self.producer.errors)
            notes.append(f"send errors: {dict(kinds)}; re-sent ids: {len(self.producer.resent)}")
        return await account(
            self.name,
            accepted,
            self.checker,
            self.ledger,
            self.workers.faults + kwargs.pop("faults", []),
            lease_timeout=self.config.redis.lease_timeout,
            began=self.began,
            notes=notes,
            failures=[*self.failures, *self.workers.unexpected_exits()],
            accepted_at=self.producer.accepted,
            **kwargs,
        )


class Progress:
    """True once the ledger shows ``target`` ids returned, or no new return for ``stall`` s."""

    def __init__(self, ledger: Ledger, target: Callable[[], int], stall: float = 20.0) -> None:
        self.ledger = ledger
        self.target = target
        self.stall = stall
        self.last = -1
        self.last_change = time.monotonic()
        self.stalled = False

    async def __call__(self) -> bool:
        ended = await self.ledger.ended_ids()
        if ended != self.last:
            self.last, self.last_change = ended, time.monotonic()
        self.stalled = time.monotonic() - self.last_change > self.stall
        return ended >= self.target() or self.stalled


@asynccontextmanager
async def scenario(
    name: str,
    ledger: Ledger,
    log_dir: Path,
    ledger_url: str,
    *,
    broker: str,
    checker_broker: str | None = None,
    **redis: Any,
) -> AsyncIterator[Chaos]:
    """Config, workers (none started yet), the producer's Server and the checker's.

    Workers and producer use ``broker``; the checker reads states from ``checker_broker`` when
    given (Redis itself, when ``broker`` is a fault proxy), else shares the producer's Server."""
    config = chaos_config(broker, ledger.prefix, **redis)
    workers = Workers(config, ledger_url, log_dir)
    began = time.monotonic()
    try:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(Server(config))
            checker = server
            if checker_broker is not None:
                direct = msgspec.structs.replace(config, broker=checker_broker)
                checker = await stack.enter_async_context(Server(direct))
            background = await stack.enter_async_context(anyio.create_task_group())
            chaos = Chaos(
                name,
                config,
                workers,
                server,
                checker,
                Producer(server, checker),
                ledger,
                began,
                background,
            )
            try:
                yield chaos
            finally:
                chaos.stopping.set()
    finally:
        workers.close()


async def keep_alive(
    workers: Workers, n: int, start: Callable[[], Proc], stop: anyio.Event
) -> None:
    """A supervisor (like ``--processes N``): whenever fewer than ``n`` workers live, record the
    dead (see :meth:`Workers.note_exits`) and start new ones, until ``stop``."""
    while not stop.is_set():
        workers.note_exits()
        for _ in range(n - len(workers.alive())):
            start()
        with anyio.move_on_after(0.1):
            await stop.wait()
