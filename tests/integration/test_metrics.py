"""Prometheus metrics of a worker started from the command line with ``--metrics-port``, scraped
over HTTP while it runs: counters and the histogram with their labels, the running gauge, and
the queue depth and dead-letter gauges read from Redis."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import Process
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.support.redis_procs import free_port
from tests.support.vecna import clean_env, eventually, tuned, worker_env
from tests.support.workers import run_cli, worker_process
from vecna_async import Config, Server, Signature, TaskFailed
from vecna_async.integrations.prometheus import PrometheusMiddleware
from vecna_async.tasks.wire import Outgoing

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.metrics_app:server"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def cli_worker(config: Config, log: Path, *extra: str) -> AbstractAsyncContextManager[Process]:
    return worker_process(config, log, 2, *extra, app=APP)


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    assert samples is not None
    return samples.get((name, frozenset(labels.items())))


async def serving(port: int) -> Samples | None:
    try:
        return await scrape(port)
    except httpx.TransportError:
        return None


async def test_a_cli_worker_serves_its_metrics(config: Config, tmp_path: Path) -> None:
    config = tuned(config, shutdown_grace=0.5)
    port = free_port()
    q = "vecna_tasks"
    async with (
        Server(config) as server,
        cli_worker(config, tmp_path / "w.log", "--metrics-port", str(port)),
    ):
        first = await eventually(lambda: serving(port), timeout=20)
        assert value(first, "vecna_tasks_running", queue=q) == 0  # there before any task
        assert value(first, "vecna_queue_depth", queue=q) == 0
        assert value(first, "vecna_dead_letters", queue=q) == 0

        assert [await (await server.send_task(Signature("add", args=[i, 1]))).get(timeout=10)
                for i in range(2)] == [1, 2]  # fmt: skip
        with pytest.raises(TaskFailed):
            await (await server.send_task(Signature("boom"))).get(timeout=10)
        assert await (await server.send_task(Signature("later"))).get(timeout=10) == 2
        # a message the worker cannot decode becomes a dead letter
        garbage = Outgoing(q, "garbage-1", "add", b"not json", 0, 0, False, "")
        await server.get_broker().publish([garbage])
        assert await eventually(lambda: _dead(server, q), timeout=10)
        # both slots busy, three more waiting
        naps = await server.send_tasks([Signature("nap", args=[30.0]) for _ in range(2)])
        waiting = await server.send_tasks([Signature("add", args=[0, 0]) for _ in range(3)])

        async def busy() -> Samples | None:
            s = await scrape(port)
            return s if value(s, "vecna_tasks_running", queue=q) == 2 else None

        s = await eventually(busy, timeout=10)
        assert value(s, "vecna_queue_depth", queue=q) == 3
        assert value(s, "vecna_dead_letters", queue=q) == 1
        total = "vecna_tasks_total"
        assert value(s, total, task="add", queue=q, state="SUCCESS") == 2
        assert value(s, total, task="boom", queue=q, state="FAILURE") == 1
        assert value(s, total, task="later", queue=q, state="RETRY") == 1
        assert value(s, total, task="later", queue=q, state="SUCCESS") == 1
        hist = "vecna_task_duration_seconds"
        assert value(s, f"{hist}_count", task="add", queue=q) == 2
        assert value(s, f"{hist}_count", task="later", queue=q) == 2
        assert value(s, f"{hist}_bucket", task="add", queue=q, le="+Inf") == 2
        assert (value(s, f"{hist}_sum", task="add", queue=q) or 0) < 1
        assert value(s, "process_cpu_seconds_total") is not None  # the default registry's

        for r in naps:
            await r.cancel()
        assert [await r.get(timeout=10) for r in waiting] == [0, 0, 0]
        s = await scrape(port)
        assert value(s, "vecna_tasks_running", queue=q) == 0
        assert value(s, "vecna_queue_depth", queue=q) == 0
        assert value(s, total, task="nap", queue=q, state="CANCELED") == 2
        assert value(s, total, task="add", queue=q, state="SUCCESS") == 5


async def _dead(server: Server, queue: str) -> bool:
    return len(await server.get_broker().get_dead_letters(queue)) == 1


def two_free_ports() -> int:
    """A port that was free a moment ago, and so was the next one."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("0.0.0.0", 0))
            port: int = first.getsockname()[1]
            try:
                second.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


async def test_processes_serve_one_port_each(config: Config, tmp_path: Path) -> None:
    port = two_free_ports()
    extra = ("--processes", "2", "--metrics-port", str(port))
    async with cli_worker(config, tmp_path / "w.log", *extra) as proc:
        for p in (port, port + 1):
            s = await eventually(lambda p=p: serving(p), timeout=20)  # type: ignore[misc]
            assert value(s, "vecna_tasks_running", queue="vecna_tasks") == 0
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await proc.wait() == 0


def test_a_missing_extra_is_one_clear_line(config: Config, tmp_path: Path) -> None:
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "prometheus_client.py").write_text("raise ImportError('No module named prometheus')")
    env = worker_env(config)
    env["PYTHONPATH"] = f"{stub}:{ROOT}"
    done = run_cli([sys.executable, "-m", "vecna_async", "worker", APP, "--metrics-port", "9"], env)
    assert done.returncode == 1
    assert "pip install 'vecna_async[prometheus]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_port_is_a_one_line_error(config: Config, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "vecna_async", "worker", APP, "--metrics-port", str(port)]
        done = run_cli(argv, worker_env(config))
    assert done.returncode == 1
    assert f"vecna-async: error: metrics port {port}: cannot listen" in done.stderr


def test_importing_vecna_async_loads_no_integration() -> None:
    # (redis-py itself imports opentelemetry when it is installed: not ours to judge)
    code = (
        "import sys, vecna_async, vecna_async.cli, vecna_async.middleware\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client' "
        "or m.startswith('vecna_async.integrations.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_the_middleware_in_your_own_registry(server: Server) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMiddleware(registry)
    metrics.watch(server, ["vecna_tasks", "other"])
    await server.send_task(Signature("add", args=[1, 2]))
    body, content_type = await metrics.render()
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'vecna_queue_depth{queue="vecna_tasks"} 1.0' in text
    assert 'vecna_queue_depth{queue="other"} 0.0' in text
    assert "process_cpu_seconds_total" not in text  # only what this registry holds
