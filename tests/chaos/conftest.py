"""Fixtures of the chaos suite: the ledger Redis (one per session, never faulted), a broker Redis
per test, a key prefix per test, and the summary of every scenario's report at the end."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from _pytest.terminal import TerminalReporter

from tests.chaos.harness import REPORTS, RESULTS_DIR, Ledger
from tests.support.redis_procs import RedisProcess


@pytest.fixture(scope="session")
def ledger_proc() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def prefix() -> str:
    """The test's vecna key prefix; the chaos app's ledger keys live under it too."""
    return f"c{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def ledger(ledger_proc: RedisProcess, prefix: str) -> AsyncIterator[Ledger]:
    client = aioredis.Redis.from_url(ledger_proc.url, max_connections=200)
    try:
        yield Ledger(client, prefix)
    finally:
        await client.aclose()


@pytest.fixture
def broker_proc() -> Iterator[RedisProcess]:
    """The broker under test, private to the test (tests that need another setup make their own)."""
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("chaos scenarios")
    terminalreporter.write_line("scenario | in | done | lost | duplicates (cause) | seconds")
    for report in REPORTS:
        terminalreporter.write_line(f"{report.line()} | {report.seconds}")
    terminalreporter.write_line(f"(one JSON file per scenario in {RESULTS_DIR})")
