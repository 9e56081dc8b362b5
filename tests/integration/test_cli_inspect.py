"""The operator's command line (API.md "Operations"): every command as a real ``vecna-async``
process against a real Redis with a real worker process, the JSON of ``inspect --json`` checked
key by key, the actions checked for their effect in Redis, exit statuses (0 done, 1 Redis or
nothing found, 2 usage), and the dashboard fetched over HTTP.

The worker runs ``tests.apps.delivery_app:server`` (its ``slow`` task) configured through
``VECNA_*`` variables; the commands get the same variables, and TARGET as either that module or
``--broker URL``. Synchronisation is by polling Redis or HTTP with deadlines.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.test_cli import APP, CONSOLE_SCRIPT, cli_process
from tests.integration.test_inspect import in_an_hour, make_dead_letters, writes
from tests.support.redis_procs import RedisProcess, free_port
from tests.support.vecna import eventually, worker_env
from tests.support.workers import run_cli, worker_process
from vecna_async import Config, Server, Signature, State

pytestmark = pytest.mark.anyio

QUEUE = "vecna_tasks"
CLI = [CONSOLE_SCRIPT]
QUEUE_KEYS = {"name": str, "ready": int, "delayed": int, "running": int, "dead_letters": int}
WORKER_KEYS = {"name": str, "host": str, "pid": int, "queues": list, "concurrency": int,
               "running": int, "last_seen": str}  # fmt: skip
PERIODIC_KEYS = {"code": str, "spec": str, "tz": str, "next_fire": str}


def vecna(config: Config, *argv: str) -> Any:
    """Run ``vecna-async ARGV`` with the test's settings in its environment."""
    return run_cli([*CLI, *argv], worker_env(config))


def json_of(config: Config, *argv: str) -> Any:
    done = vecna(config, *argv, "--json")
    assert done.returncode == 0, done
    return json.loads(done.stdout)


def iso_utc(value: str) -> datetime:
    """An ISO 8601 UTC time as API.md promises it."""
    assert value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return parsed


def check_keys(item: dict[str, Any], expected: Mapping[str, type]) -> None:
    for key, kind in expected.items():
        assert key in item, (key, item)
        assert isinstance(item[key], kind), (key, item[key])


async def test_every_read_command_against_a_running_worker(
    config: Config, tmp_path: Path, rc: aioredis.Redis
) -> None:
    async with Server(config) as server:
        dead = await make_dead_letters(config, "failing", 2)
        await server.send_periodic_task("0 6 * * *", Signature("slow", args=[0, 0], code="daily"))
        later = await server.send_task(Signature("slow", args=[9, 0.0], eta=in_an_hour()))
        async with worker_process(config, tmp_path / "cli-worker.log", 4) as proc:
            busy = await server.send_tasks([Signature("slow", args=[i, 60.0]) for i in range(2)])
            insp = server.inspect()

            async def both_running() -> bool:
                # the leases show at once; the worker's own count at its next heartbeat
                workers = await insp.workers()
                beating = [w.running for w in workers] == [2]
                return beating and len(await insp.running(QUEUE)) == 2

            await eventually(both_running, timeout=20)
            await inspect_as_text(config)
            await inspect_as_json(config, proc.pid)
            await each_listing(config, busy[0].task_id, later.task_id, dead)
            await one_task(config, busy[0].task_id, later.task_id)
            proc.send_signal(signal.SIGKILL)

            async def dropped_out() -> bool:
                listed = json_of(config, "workers", "--broker", config.broker)
                return not any(w["name"] == "cli-worker" for w in listed)

            await eventually(dropped_out, timeout=10, interval=0.2)


async def inspect_as_text(config: Config) -> None:
    done = vecna(config, "inspect", APP, "--queue", "failing")  # (no worker consumes it)
    assert done.returncode == 0, done
    out = done.stdout
    queues, workers, periodic = out.strip().split("\n\n")
    lines = queues.splitlines()
    assert lines[0] == "Queues"
    header = lines[1]
    assert header.split() == ["QUEUE", "READY", "DELAYED", "RUNNING", "DEAD", "PARKED", "HELD"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["failing"].split()[1:] == ["0", "0", "0", "2", "0", "0"]
    assert rows[QUEUE].split()[1:] == ["0", "1", "2", "0", "0", "0"]
    for line in lines[2:]:  # numbers right-aligned under their headers
        for column in ("READY", "RUNNING", "HELD"):
            end = header.index(column) + len(column)
            assert line[end - 1].isdigit(), line
            assert len(line) == end or line[end] == " ", line
    assert workers.splitlines()[0] == "Workers (1 live)"
    assert "cli-worker" in workers
    assert workers.splitlines()[1].split()[:4] == ["WORKER", "HOST", "PID", "QUEUES"]
    assert periodic.splitlines()[0] == "Periodic"
    (daily,) = [line for line in periodic.splitlines() if line.startswith("daily")]
    assert "0 6 * * *" in daily
    assert "UTC" in daily
    assert "slow" in daily
    assert "06:00" in daily


async def inspect_as_json(config: Config, worker_pid: int) -> None:
    snap = json_of(config, "inspect", "--broker", config.broker, "-q", "failing")
    assert set(snap) >= {"queues", "workers", "periodic"}
    queues = {q["name"]: q for q in snap["queues"]}
    assert set(queues) == {QUEUE, "failing"}
    for q in queues.values():
        check_keys(q, QUEUE_KEYS)
    assert {k: queues[QUEUE][k] for k in QUEUE_KEYS} == {
        "name": QUEUE, "ready": 0, "delayed": 1, "running": 2, "dead_letters": 0,
    }  # fmt: skip
    assert (queues["failing"]["dead_letters"], queues[QUEUE]["parked"]) == (2, 0)
    (worker,) = snap["workers"]
    check_keys(worker, WORKER_KEYS)
    assert (worker["name"], worker["pid"], worker["queues"]) == ("cli-worker", worker_pid, [QUEUE])
    assert (worker["concurrency"], worker["running"]) == (4, 2)
    seen = iso_utc(worker["last_seen"])
    assert abs((datetime.now(UTC) - seen).total_seconds()) < 10
    (daily,) = snap["periodic"]
    check_keys(daily, PERIODIC_KEYS)
    assert (daily["code"], daily["spec"], daily["tz"]) == ("daily", "0 6 * * *", "UTC")
    assert iso_utc(daily["next_fire"]).hour == 6
    assert (daily["last_fire"], daily["tasks"], daily["kind"]) == (None, ["slow"], "task")


async def each_listing(config: Config, running_id: str, later_id: str, dead: list[str]) -> None:
    assert [q["name"] for q in json_of(config, "queues", APP, "--queue", "failing")] == ["failing"]
    (extra,) = json_of(config, "queues", APP, "--queue", "elsewhere")
    assert extra == {"name": "elsewhere", "ready": 0, "delayed": 0, "running": 0,
                     "dead_letters": 0, "parked": 0, "held": 0}  # fmt: skip
    assert [w["name"] for w in json_of(config, "workers", APP, "--queue", QUEUE)] == ["cli-worker"]
    assert json_of(config, "workers", APP, "--queue", "failing") == []
    running = json_of(config, "running", APP)
    assert running_id in {t["id"] for t in running}
    for t in running:
        assert (t["name"], t["worker"], t["queue"]) == ("slow", "cli-worker", QUEUE)
        assert iso_utc(t["lease_deadline"]) > iso_utc(t["started"])
    assert len(json_of(config, "running", APP, "--limit", "1")) == 1
    assert len(json_of(config, "running", APP, "--offset", "1")) == 1
    (delayed,) = json_of(config, "delayed", APP)
    assert (delayed["id"], delayed["name"]) == (later_id, "slow")
    iso_utc(delayed["due"])
    letters = json_of(config, "dead-letters", APP, "--queue", "failing")
    assert sorted(d["id"] for d in letters) == sorted(dead)
    assert "lease expired" in letters[0]["reason"]
    assert len(json_of(config, "dead-letters", APP, "-q", "failing", "--limit", "1")) == 1
    assert [p["code"] for p in json_of(config, "periodic", APP)] == ["daily"]
    assert json_of(config, "periodic", APP, "--queue", "failing") == []
    for command in ("queues", "workers", "running", "delayed", "periodic", "dead-letters"):
        done = vecna(config, command, APP)
        assert done.returncode == 0, done
        assert done.stdout.startswith(TITLES[command]), done.stdout


TITLES = {
    "queues": "Queues", "workers": "Workers", "running": "Running", "delayed": "Delayed",
    "periodic": "Periodic", "dead-letters": "Dead letters",
}  # fmt: skip


async def one_task(config: Config, running_id: str, later_id: str) -> None:
    info = json_of(config, "task", APP, running_id)
    assert (info["id"], info["state"], info["place"], info["worker"]) == (
        running_id, "STARTED", "running", "cli-worker",
    )  # fmt: skip
    assert info["args"] == [0, 60.0] or info["args"] == [1, 60.0]
    done = vecna(config, "task", "--broker", config.broker, later_id)
    assert done.returncode == 0, done
    assert "state:" in done.stdout
    assert "PENDING" in done.stdout
    assert "delayed" in done.stdout
    done = vecna(config, "task", APP, "0123456789abcdef")
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "vecna-async: no task 0123456789abcdef in the known queues (never sent, or its result "
        "expired)"
    ]


async def test_the_actions_change_redis(config: Config, rc: aioredis.Redis) -> None:
    async with Server(config) as server:
        q = server.keys.queue(QUEUE)
        dead = await make_dead_letters(config, QUEUE, 4)
        later = await server.send_task(Signature("slow", args=[1, 0.0], eta=in_an_hour()))
        elsewhere = await server.send_task(
            Signature("slow", args=[2, 0.0], eta=in_an_hour(), routing_key="emails")
        )
        await server.send_periodic_task("0 6 * * *", Signature("slow", args=[0, 0], code="daily"))

        done = vecna(config, "dead-letters", "requeue", APP, dead[0], dead[1])
        assert (done.returncode, done.stdout) == (
            0,
            f"requeued 2 dead letter(s) of queue {QUEUE!r}\n",
        )
        assert await rc.zscore(q.ready, dead[0]) is not None
        assert await rc.zscore(q.dead, dead[1]) is None
        done = vecna(config, "dead-letters", "purge", "--broker", config.broker, dead[2], "nope")
        assert done.returncode == 1, done  # one of the two was not a dead letter
        assert "1 of the 2 ids are not dead letters" in done.stderr
        assert not await rc.exists(q.record(dead[2]))
        done = vecna(config, "dead-letters", "purge", APP, "--all")
        assert (done.returncode, done.stdout) == (
            0,
            f"purged 1 dead letter(s) of queue {QUEUE!r}\n",
        )
        assert await rc.zcard(q.dead) == 0

        done = vecna(config, "delayed", "cancel", APP, later.task_id)
        assert done.returncode == 0, done
        assert await rc.zscore(q.delayed, later.task_id) is None
        state = await later.get_state()
        assert state is not None
        assert state.state is State.CANCELED
        # found in its queue without --queue; again: it no longer waits
        done = vecna(config, "delayed", "cancel", APP, elsewhere.task_id)
        assert done.returncode == 0, done
        assert "in queue 'emails'" in done.stdout
        done = vecna(config, "delayed", "cancel", APP, elsewhere.task_id, "--queue", "emails")
        assert done.returncode == 1, done
        assert "was not canceled: it is CANCELED" in done.stderr
        done = vecna(config, "delayed", "cancel", APP, "never-sent")
        assert done.returncode == 1, done
        assert await rc.zscore(q.tombstones, "never-sent") is None

        done = vecna(config, "periodic", "cancel", "--broker", config.broker, "daily")
        assert done.returncode == 0, done
        assert not await rc.hexists(server.keys.periodic_defs, "daily")
        done = vecna(config, "periodic", "cancel", APP, "daily")
        assert (done.returncode, done.stderr) == (1, "vecna-async: no periodic entry 'daily'\n")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["inspect"], "pkg.module:server"),
        (["inspect", APP, "--broker", "redis://127.0.0.1:1/0"], "pkg.module:server"),
        (["queues", "nomodule"], "'nomodule'"),
        (["dead-letters", "requeue", APP], "the IDs, or --all"),
        (["dead-letters", "purge", APP, "x", "--all"], "the IDs, or --all"),
        (["dead-letters", APP, "--all"], "--all goes with requeue or purge"),
        (["periodic", "cancel", APP], "give one CODE"),
        (["task", APP], "give one task ID"),
        (["task", APP, "bad id"], "task id 'bad id'"),
        (["delayed", APP, "extra"], "unexpected 'extra'"),
        (["running", APP, "--limit", "-1"], "must be 0 or more"),
        (["inspect", APP, "--bogus"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_with_one_line(config: Config, argv: list[str], words: str) -> None:
    done = vecna(config, *argv)
    assert done.returncode == 2, done
    assert words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("vecna-async")


def test_unreachable_redis_is_one_line_and_status_1(config: Config) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    for argv in (["inspect", "--broker", down], ["task", "--broker", down, "abc", "--json"]):
        done = run_cli([*CLI, *argv, "--timeout", "3"], worker_env(config))
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("vecna-async: error: "), lines[0]
        assert "127.0.0.1" in lines[0]


def test_help_has_examples(config: Config) -> None:
    for command in ("inspect", "queues", "workers", "running", "delayed", "periodic",
                    "dead-letters", "task", "dashboard"):  # fmt: skip
        done = vecna(config, command, "--help")
        assert done.returncode == 0, done
        assert "examples:" in done.stdout
        assert f"vecna-async {command}" in done.stdout
    top = vecna(config, "--help")
    assert "inspect" in top.stdout
    assert "dead-letters" in top.stdout


async def test_read_only_commands_never_write(
    config: Config, server: Server, rc: aioredis.Redis
) -> None:
    await make_dead_letters(config, QUEUE, 1)
    sent = await server.send_task(Signature("slow", args=[1, 0.0], eta=in_an_hour()))
    await server.send_periodic_task("0 6 * * *", Signature("slow", args=[0, 0], code="daily"))
    before = await writes(rc)
    for argv in (["inspect"], ["inspect", "--json"], ["queues"], ["workers"], ["running"],
                 ["delayed"], ["periodic"], ["dead-letters"], ["task", sent.task_id],
                 ["task", "unknown"]):  # fmt: skip
        done = vecna(config, argv[0], "--broker", config.broker, *argv[1:])
        assert done.returncode in (0, 1), done
    assert await writes(rc) == before


# -- the dashboard --------------------------------------------------------------------------------


async def test_the_dashboard_over_http(config: Config, tmp_path: Path) -> None:
    """Against a Redis of its own, which the test stops to see /healthz fail."""
    with RedisProcess() as own:
        own_config = Config(broker=own.url, redis=config.redis)
        async with Server(own_config) as server:
            await server.send_task(Signature("slow", args=[1, 0.0], eta=in_an_hour()))
            await server.send_periodic_task("0 6 * * *", Signature("slow", code="daily"))
        port = free_port()
        argv = [*CLI, "dashboard", "--broker", own.url, "--port", str(port), "--refresh", "5"]
        log = tmp_path / "dashboard.log"
        async with (
            cli_process(argv, own_config, log) as proc,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
        ):

            async def healthy() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=20, interval=0.1)
            assert "http://127.0.0.1:" in log.read_text()
            api = await http.get("/api/inspect")
            assert api.status_code == 200
            assert api.headers["content-type"] == "application/json"
            snap = api.json()
            assert set(snap) >= {"queues", "workers", "periodic"}
            (queue,) = snap["queues"]
            check_keys(queue, QUEUE_KEYS)
            assert (queue["name"], queue["delayed"]) == (QUEUE, 1)
            (daily,) = snap["periodic"]
            check_keys(daily, PERIODIC_KEYS)
            assert snap["workers"] == []
            page = await http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            html = page.text
            assert "<meta http-equiv='refresh' content='5'>" in html
            for text in ("<h2>Queues</h2>", "<th>DELAYED</th>", f"<td>{QUEUE}</td>",
                         "<td>daily</td>", "no live workers"):  # fmt: skip
                assert text in html, text
            assert (await http.get("/nowhere")).status_code == 404
            assert (await http.post("/api/inspect")).status_code == 405
            head = await http.head("/api/inspect")
            assert (head.status_code, head.content) == (200, b"")
            own.stop()
            down = await http.get("/healthz")
            assert down.status_code == 503
            assert down.text.startswith("unavailable: ")
            assert (await http.get("/api/inspect")).status_code == 503
            assert (await http.get("/")).status_code == 503
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                assert await proc.wait() == 0
