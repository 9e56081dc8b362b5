"""Every example in examples/ runs against a private Redis and prints what the README says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.vecna import eventually, running_worker
from vecna_async import Config

ROOT = Path(__file__).resolve().parent.parent


def _env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "VECNA_BROKER": redis_url,
        "VECNA_REDIS_KEY_PREFIX": f"ex{uuid.uuid4().hex[:8]}",
        "PYTHONPATH": str(ROOT),
    }


def _run(script: str, redis_url: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart(redis_url: str) -> None:
    out = _run("quickstart.py", redis_url)
    assert "add(1, 1) = 2" in out
    assert "add(2, 3) = 5" in out
    assert "divmod(7, 2) = (3, 1)" in out
    assert "state: SUCCESS" in out


def test_workflows(redis_url: str) -> None:
    out = _run("workflows.py", redis_url)
    assert "group: [2, 10]" in out
    assert "chord: 20" in out
    assert "chain: 48" in out


def test_delayed_and_periodic(redis_url: str) -> None:
    out = _run("delayed_and_periodic.py", redis_url)
    assert "before its ETA: PENDING" in out
    assert "then: half a second later" in out
    assert "canceled: it will never run" in out
    assert "then was canceled" in out


def test_declared_schedule(redis_url: str) -> None:
    out = _run("declared_schedule.py", redis_url)
    assert "declared schedule fired 2 times" in out
    assert "after a restart: 1 definition, code 'send_report'" in out
    assert "then it was canceled" in out


def test_retries_and_errors(redis_url: str) -> None:
    out = _run("retries_and_errors.py", redis_url)
    assert "flaky: ok after 2 calls" in out
    assert "rate_limited: done" in out
    assert "on_error callback: 'ValueError: bad input' in checkout" in out
    assert "error handler: always_fails: bad input" in out
    assert "always_fails raised TaskFailed: ValueError: bad input" in out


def test_demo_producer_against_a_cli_worker(redis_url: str) -> None:
    env = _env(redis_url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "vecna_async", "worker", "examples.demo.tasks:server"],
        env=env,
        cwd=ROOT,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", "examples.demo.producer"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    assert done.returncode == 0, done.stderr
    assert "multiply(add(1, 1), 10) = 20" in done.stdout
    assert "divide(1, 0) failed as expected: ZeroDivisionError" in done.stdout


def _run_without_redis(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` with no VECNA_ variable but VECNA_BROKER=memory://: nothing reaches a Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VECNA_")}
    env.update(VECNA_BROKER="memory://", PYTHONPATH=str(ROOT))
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_demo_in_one_process_on_memory() -> None:
    """``./dev demo --memory``: the producer runs the worker itself, no Redis."""
    done = _run_without_redis([sys.executable, "-m", "examples.demo.producer"])
    assert done.returncode == 0, done.stderr
    assert "memory://: no Redis; the worker runs in this process" in done.stdout
    assert "multiply(add(1, 1), 10) = 20" in done.stdout
    assert "flaky: job-1 done after 3 attempts" in done.stdout
    assert "divide(1, 0) failed as expected: ZeroDivisionError" in done.stdout


def test_testing_your_tasks_with_memory() -> None:
    """The README's "Testing your tasks": examples/test_with_memory.py passes without Redis."""
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    done = _run_without_redis([*argv, "examples/test_with_memory.py"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_config_yml_loads() -> None:
    cnf = Config.from_yaml(ROOT / "examples" / "config.yml")
    assert cnf.default_queue == "vecna_tasks"
    assert cnf.redis.max_deliveries == 5


@pytest.fixture
def example_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The web examples build their Server at import, from the environment: import them fresh."""
    for key, value in _env(redis_url).items():
        monkeypatch.setenv(key, value)
    for name in ("examples.fastapi_app", "examples.aiohttp_app"):
        sys.modules.pop(name, None)
    yield
    for name in ("examples.fastapi_app", "examples.aiohttp_app"):
        sys.modules.pop(name, None)


def test_fastapi_app(example_env: None, redis_url: str) -> None:
    from fastapi.testclient import TestClient

    from examples import fastapi_app

    env = dict(os.environ)
    worker = subprocess.Popen(
        [sys.executable, "-m", "vecna_async", "worker", "examples.fastapi_app:tasks"],
        env=env,
        cwd=ROOT,
    )
    try:
        with TestClient(fastapi_app.app) as client:
            task_id = client.post("/signup", params={"address": "a@example.com"}).json()["task_id"]
            body = client.get(f"/tasks/{task_id}", params={"wait": 10}).json()
            assert body == {
                "task_id": task_id,
                "state": "SUCCESS",
                "value": "welcome mail sent to a@example.com",
            }
            later = client.post("/signup-later", params={"address": "b@x.org", "seconds": 0.3})
            later_id = later.json()["task_id"]
            assert client.get(f"/tasks/{later_id}").json()["state"] == "PENDING"
            done = client.get(f"/tasks/{later_id}", params={"wait": 10}).json()
            assert done["value"] == "welcome mail sent to b@x.org"
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


@pytest.mark.anyio
async def test_aiohttp_app(example_env: None) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from examples import aiohttp_app

    async with (
        TestClient(TestServer(aiohttp_app.make_app())) as client,
        running_worker(aiohttp_app.tasks, 10, scheduler=False),
    ):
        response = await client.get("/resize", params={"url": "http://img/x.png", "width": "64"})
        body = await response.json()
        assert body["resized"] == "http://img/x.png?w=64"
        state = await eventually(lambda: aiohttp_app.tasks.result(body["task_id"]).get_state())
        assert state is not None
        assert state.is_success()


def test_progress_sse(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSE route streams each progress report, then the result, driven by FastAPI's client."""
    from fastapi.testclient import TestClient

    for key, value in _env(redis_url).items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("examples.progress_sse", None)
    from examples import progress_sse

    worker = subprocess.Popen(
        [sys.executable, "-m", "vecna_async", "worker", "examples.progress_sse:tasks"],
        env=dict(os.environ),
        cwd=ROOT,
    )
    try:
        with TestClient(progress_sse.app) as client:
            task_id = client.post("/reports", params={"pages": 4}).json()["task_id"]
            lines = []
            with client.stream("GET", f"/reports/{task_id}/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = [line for line in response.iter_lines() if line]
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        sys.modules.pop("examples.progress_sse", None)
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert lines[-2:] == ["event: done", 'data: "report of 4 pages"']
    pages = [d["page"] for d in data[:-1]]
    assert pages == sorted(pages)
    assert pages[-1] == 4


def test_authoring(redis_url: str) -> None:
    out = _run("authoring.py", redis_url)
    assert "greet: hello world (attempt 1, queue vecna_tasks)" in out
    assert "too_slow: TaskTimeout: task 'too_slow' ran past its timeout of 0.2s" in out
    assert "forever reported: started" in out
    assert "canceled: True" in out
    assert "forever: CANCELED" in out
    assert "call_api: [0, 1, 2, 3, 4, 5] at most 2 at once" in out


def test_middleware(redis_url: str) -> None:
    out = _run("middleware.py", redis_url)
    assert "audit: invoice attempt 1 will retry in 0.1s" in out
    assert "audit: invoice attempt 1 -> retry: RetryTaskLater(" in out
    assert "audit: invoice attempt 2 -> success: 'invoice of 42 for tenant acme'" in out
    assert "result: invoice of 42 for tenant acme" in out
    assert "audit: refund attempt 1 -> failure: ValueError('cannot refund 7')" in out


def test_metrics(redis_url: str) -> None:
    out = _run("metrics.py", redis_url)
    q = 'queue="vecna_tasks"'
    assert f'vecna_tasks_total{{{q},state="SUCCESS",task="resize"}} 3.0' in out
    assert f'vecna_tasks_total{{{q},state="FAILURE",task="charge"}} 1.0' in out
    assert f'vecna_task_duration_seconds_count{{{q},task="resize"}} 3.0' in out
    assert f"vecna_tasks_running{{{q}}} 0.0" in out
    assert f"vecna_queue_depth{{{q}}} 0.0" in out
    assert f"vecna_dead_letters{{{q}}} 0.0" in out


def test_tracing(redis_url: str) -> None:
    out = _run("tracing.py", redis_url)
    assert "checkout: o-17 paid" in out
    tree = out.split("one trace, ", 1)[1].splitlines()[1:]
    assert [line.split(" (")[0].strip() for line in tree][1:] == [
        "send checkout",
        "process checkout",
        "send send_receipt",
        "process send_receipt",
    ]
    assert tree[0].startswith("POST /checkout/")
    assert tree[0].endswith("(SERVER)")
    assert tree[-1] == "        process send_receipt (CONSUMER)"
