"""Worker subprocesses for tests: ``python -m vecna_async worker tests.apps.delivery_app:server``.

The subprocess is configured through ``VECNA_*`` variables built from the test's Config
(``tests.support.vecna.worker_env``), so both sides share one key prefix; the app's tasks leave
markers in Redis (see ``tests/apps/delivery_app.py``) that these helpers name and read.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.abc import Process

from tests.support.vecna import clean_env, worker_env
from vecna_async import Config

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.delivery_app:server"


@asynccontextmanager
async def worker_process(
    config: Config, log_path: Path, concurrency: int = 5, *extra: str, app: str = APP
) -> AsyncIterator[Process]:
    """A ``python -m vecna_async worker`` subprocess of ``app``; SIGKILLed on exit if still
    running.

    Its log goes to ``log_path`` and is printed afterwards (pytest shows it on failure).
    """
    argv = [sys.executable, "-m", "vecna_async", "worker", app]
    argv += ["--concurrency", str(concurrency), "--name", log_path.stem, *extra]
    with log_path.open("ab") as log:
        proc = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, env=worker_env(config)
        )
    try:
        yield proc
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.aclose()
        print(f"--- {log_path.name} (exit {proc.returncode}) ---")
        print(read_log(log_path))


def run_cli(
    argv: list[str], env: dict[str, str] | None = None, *, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (the command line, usually) from the repository as a user would, with no
    stdin; its exit status and output."""
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env or clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


async def wait_exit(proc: Process, timeout: float) -> int:
    with anyio.fail_after(timeout):
        return await proc.wait()


def marker(config: Config, name: str) -> str:
    """A marker key written by delivery_app (same naming as ``delivery_app.marker_key``)."""
    return f"{config.redis.key_prefix}:app:{name}"


async def counts(rc: aioredis.Redis, key: str) -> dict[int, int]:
    raw: dict[Any, Any] = await rc.hgetall(key)
    return {int(k): int(v) for k, v in raw.items()}
