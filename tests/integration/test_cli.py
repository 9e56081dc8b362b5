"""The command line: clear errors for bad targets, and real workers started from it.

Workers run ``tests.apps.delivery_app:server`` configured through ``VECNA_*`` variables built
from the test's Config. Synchronisation is by polling logs, Redis or process state with deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis
from anyio.abc import Process

from tests.support.vecna import eventually, worker_env
from tests.support.workers import read_log, run_cli, wait_exit
from vecna_async import Config, Server, Signature

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.delivery_app:server"
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "vecna-async")
PYTHON_M = [sys.executable, "-m", "vecna_async"]
READY_LINE = ": queues vecna_tasks, concurrency"  # logged by each worker once it runs


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@asynccontextmanager
async def cli_process(
    argv: list[str], config: Config, log_path: Path, *, new_session: bool = False
) -> AsyncIterator[Process]:
    """A CLI subprocess; on exit SIGKILLed (with its process group when it has its own)."""
    with log_path.open("ab") as log:
        proc = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=ROOT,
            env=worker_env(config),
            start_new_session=new_session,
        )
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            if new_session:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            elif proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.aclose()
        print(f"--- {log_path.name} (exit {proc.returncode}) ---")
        print(read_log(log_path))


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "mentions"),
    [
        ("bad", ["'bad'", "pkg.module:server"]),
        ("nope:x", ["'nope'"]),
        ("vecna_async:Config", ["Config", "Server"]),
        ("tests.apps.delivery_app:nothing", ["'nothing'", "tests.apps.delivery_app"]),
        (":server", ["':server'"]),
        ("tests.apps.delivery_app:", ["'tests.apps.delivery_app:'"]),
    ],
)
def test_bad_worker_target_is_a_one_line_error(target: str, mentions: list[str]) -> None:
    done = run_cli([*PYTHON_M, "worker", target])
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vecna-async: error: "), lines[0]
    assert "Traceback" not in done.stderr
    for word in mentions:
        assert word in lines[0]


def test_help_from_the_console_script() -> None:
    done = run_cli([CONSOLE_SCRIPT, "--help"])
    assert done.returncode == 0, done
    assert "worker" in done.stdout
    done = run_cli([CONSOLE_SCRIPT, "worker", "--help"])
    assert done.returncode == 0, done
    for option in ("--concurrency", "--queue", "--name", "--processes"):
        assert option in done.stdout
    done = run_cli([CONSOLE_SCRIPT])
    assert done.returncode == 2
    assert "usage" in done.stderr


# -- real workers ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_console_script_worker_runs_a_task_and_stops_on_sigterm(
    config: Config, server: Server, tmp_path: Path
) -> None:
    argv = [CONSOLE_SCRIPT, "worker", APP, "--concurrency", "2", "--name", "cli-worker"]
    async with cli_process(argv, config, tmp_path / "worker.log") as proc:
        r = await server.send_task(Signature("slow", args=[7, 0.01]))
        assert await r.get(timeout=15) == 7
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 10) == 0
    assert "worker cli-worker stopped" in read_log(tmp_path / "worker.log")


@pytest.mark.anyio
async def test_repeated_queue_options_consume_several_queues_in_order(
    config: Config, server: Server, tmp_path: Path
) -> None:
    argv = [CONSOLE_SCRIPT, "worker", APP, "--queue", "urgent", "--queue", "vecna_tasks"]
    log = tmp_path / "worker.log"
    async with cli_process(argv, config, log) as proc:
        urgent = await server.send_task(Signature("slow", args=[1, 0.0], routing_key="urgent"))
        normal = await server.send_task(Signature("slow", args=[2, 0.0]))
        assert [await urgent.get(timeout=15), await normal.get(timeout=15)] == [1, 2]
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 10) == 0
    assert ": queues urgent, vecna_tasks, concurrency" in read_log(log)


async def both_children_ready(log: Path) -> bool:
    return read_log(log).count(READY_LINE) >= 2


@pytest.mark.anyio
async def test_processes_2_runs_two_workers_and_sigterm_stops_both(
    config: Config, server: Server, rc: aioredis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "supervisor.log"
    argv = [CONSOLE_SCRIPT, "worker", APP, "--processes", "2", "--concurrency", "1"]
    async with cli_process(argv, config, log) as proc:
        await eventually(lambda: both_children_ready(log), timeout=15)
        # one slot each and 1 s tasks: the second task goes to the other worker
        results = await server.send_tasks(Signature("whoami", args=[1.0]) for _ in range(4))
        pids = {await r.get(timeout=20) for r in results}
        assert len(pids) == 2, pids
        assert proc.pid not in pids
        for pid in pids:
            assert parent_pid(pid) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
    for pid in pids:
        assert not pid_alive(pid), f"worker process {pid} outlived its supervisor"
    assert read_log(log).count("stopped") >= 2


@pytest.mark.anyio
async def test_ctrl_c_on_processes_2_drains_gracefully(
    config: Config, server: Server, rc: aioredis.Redis, tmp_path: Path
) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: supervisor and
    workers. That is one request to stop, so running tasks must still finish (grace 30 s)."""
    prefix = config.redis.key_prefix
    log = tmp_path / "supervisor.log"
    argv = [CONSOLE_SCRIPT, "worker", APP, "--processes", "2", "--concurrency", "1"]
    async with cli_process(argv, config, log, new_session=True) as proc:
        await eventually(lambda: both_children_ready(log), timeout=15)
        results = await server.send_tasks(Signature("slow", args=[i, 1.5]) for i in range(2))

        async def both_running() -> bool:
            return int(await rc.hlen(f"{prefix}:app:started")) == 2

        await eventually(both_running, timeout=10)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        sent = time.monotonic()
        assert await wait_exit(proc, 15) == 0
        took = time.monotonic() - sent
    assert await rc.hgetall(f"{prefix}:app:finished") == {b"0": b"1", b"1": b"1"}, (
        f"the running tasks were handed back instead of finishing (stopped after {took:.1f}s)"
    )
    assert [await r.get(timeout=5) for r in results] == [0, 1]
