"""What a worker tells about itself, in process: its log records (task fields, one line per
outcome, tracebacks at DEBUG), its entry in the worker registry, and its startup timeout."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import anyio
import pytest

from tests.support.redis_procs import free_port
from tests.support.vecna import eventually, running_worker
from vecna_async import BrokerUnavailable, Config, Context, RetryTaskLater, Server, TaskFailed
from vecna_async.logs import FIELDS, LOGGERS, JsonFormatter
from vecna_async.worker.presence import WorkerInfo, registered_workers

pytestmark = pytest.mark.anyio
PACKAGE = Path(__file__).resolve().parents[2] / "vecna_async"


async def test_every_logger_of_the_package_carries_the_task_fields() -> None:
    used = set()
    for path in PACKAGE.rglob("*.py"):
        used |= set(re.findall(r'getLogger\("([^"]+)"\)', path.read_text()))
    assert used, "no loggers found"
    assert used <= set(LOGGERS), used - set(LOGGERS)


async def test_the_json_formatter_writes_one_object_a_line() -> None:
    record = logging.LogRecord("vecna_async.worker", logging.INFO, "", 0, "hi %s", ("x",), None)
    record.task_id, record.task_name, record.queue, record.worker = "t1", "add", "q", None
    line = JsonFormatter().format(record)
    assert "\n" not in line
    import json

    out = json.loads(line)
    assert out["message"] == "hi x"
    assert (out["task_id"], out["task_name"], out["queue"]) == ("t1", "add", "q")
    assert "worker" not in out  # None: not set


async def test_task_lines_carry_their_fields_and_a_failure_its_traceback_at_debug(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vecna_async")

    @server.task(name="ok")
    async def ok() -> int:
        return 1

    @server.task(name="boom")
    async def boom() -> None:
        raise ValueError("no good")

    async with running_worker(server):
        good = await ok.send()
        bad = await boom.send()
        assert await good.get(timeout=10) == 1
        with pytest.raises(TaskFailed):
            await bad.get(timeout=10)
    by_task: dict[str, list[logging.LogRecord]] = {}
    for rec in caplog.records:
        assert all(hasattr(rec, f) for f in FIELDS), rec  # always there, None if not known
        if rec.name.startswith("vecna_async.worker"):
            assert rec.worker == "test-worker", rec  # type: ignore[attr-defined]
        if getattr(rec, "task_id", None):
            by_task.setdefault(rec.task_id, []).append(rec)  # type: ignore[attr-defined]
    lines = [(r.levelname, r.getMessage()) for r in by_task[good.task_id]]
    assert [lvl for lvl, _ in lines if lvl != "DEBUG"] == ["INFO", "INFO"], lines
    # one line per state change: PENDING (sent), RECEIVED, STARTED, SUCCESS
    assert [lvl for lvl, _ in lines] == ["DEBUG", "INFO", "DEBUG", "INFO"], lines
    assert "sent to 'vecna_tasks'" in lines[0][1]
    assert "received" in lines[1][1]
    assert "started, attempt 1" in lines[2][1]
    assert re.search(r"succeeded in \d+\.\d{3}s", lines[-1][1]), lines
    failed = [r for r in by_task[bad.task_id] if r.levelno >= logging.WARNING]
    assert len(failed) == 1
    assert failed[0].levelname == "WARNING"
    assert "ValueError: no good" in failed[0].getMessage()
    assert failed[0].exc_info is None  # the one-line summary
    tracebacks = [r for r in by_task[bad.task_id] if r.exc_info]
    assert [r.levelname for r in tracebacks] == ["DEBUG"]
    for rec in by_task[bad.task_id]:
        assert (rec.task_name, rec.queue) == ("boom", "vecna_tasks")  # type: ignore[attr-defined]


async def test_a_retry_and_a_cancel_are_state_changes_with_a_line_each(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vecna_async")
    started = anyio.Event()

    @server.task(name="later")
    async def later(ctx: Context) -> int:
        if ctx.attempt == 1:
            raise RetryTaskLater("not yet", delay=0.05)
        return ctx.attempt

    @server.task(name="forever")
    async def forever() -> None:
        started.set()
        await anyio.sleep(60)

    async with running_worker(server):
        retried = await later.send()
        assert await retried.get(timeout=10) == 2
        canceled = await forever.send()
        await started.wait()
        await canceled.cancel()
        await eventually(lambda: _logged(caplog, canceled.task_id, "canceled while running"))

    def lines(task_id: str) -> list[tuple[str, str]]:
        return [
            (r.levelname, r.getMessage())
            for r in caplog.records
            if getattr(r, "task_id", None) == task_id
        ]

    retry = lines(retried.task_id)
    assert [m.split(" (")[0] + m.split(")", 1)[1] for _, m in retry[:4]] == [
        "task later sent to 'vecna_tasks'",
        "task later received",
        "task later started, attempt 1",
        "task later retrying in 0.050s: not yet (retry in 0.05s)",
    ]
    assert [lvl for lvl, _ in retry[:4]] == ["DEBUG", "INFO", "DEBUG", "INFO"]
    assert "started, attempt 2" in retry[5][1]
    stop = lines(canceled.task_id)
    assert ("INFO", f"task {canceled.task_id} in 'vecna_tasks' was canceled: stopping it") in stop
    assert stop[-1] == ("DEBUG", f"task forever ({canceled.task_id}) canceled while running")


async def _logged(caplog: pytest.LogCaptureFixture, task_id: str, text: str) -> bool:
    return any(
        getattr(r, "task_id", None) == task_id and text in r.getMessage() for r in caplog.records
    )


async def test_the_registry_shows_a_running_worker(config: Config, server: Server) -> None:
    rt_keys = server.keys

    @server.task(name="nap")
    async def nap(seconds: float) -> None:
        await anyio.sleep(seconds)

    @server.task(name="fail")
    async def fail() -> None:
        raise RuntimeError("x")

    async with running_worker(server, concurrency=3):
        await (await nap.send(0.0)).get(timeout=10)
        with pytest.raises(TaskFailed):
            await (await fail.send()).get(timeout=10)
        await nap.send(30.0)
        async with server.connection() as rt:
            client = rt.broker_clients.main  # as `vecna-async check` reads it

        async def entry() -> WorkerInfo | None:
            _, workers = await registered_workers(client, rt_keys, "test")
            for w in workers:
                if w.name == "test-worker" and (w.running, w.done) == (1, 1):
                    return w
            return None

        w = await eventually(entry, timeout=10)
        assert w is not None
        assert w.queues == ["vecna_tasks"]
        assert w.concurrency == 3
        assert w.failed == 1
        assert w.pid > 0
        assert w.started <= w.last_seen
    _, workers = await registered_workers(client, rt_keys, "test")
    assert workers == []  # left at a graceful stop


async def test_worker_startup_timeout_raises_instead_of_waiting_for_ever() -> None:
    server = Server(Config(broker=f"redis://127.0.0.1:{free_port()}/0"))
    worker = server.new_worker("impatient", 1)
    worker.startup_timeout = 1.0
    started = time.monotonic()
    with anyio.fail_after(20), pytest.raises(BrokerUnavailable, match="startup timeout of 1s"):
        await worker.launch()
    assert time.monotonic() - started < 10
