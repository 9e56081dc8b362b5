"""The command line as a platform team runs it (issue 11): configuration errors, refused
credentials and an unreachable Redis end a starting worker at once with one line; ``check`` is a
health probe; ``--processes`` supervises even one process; logging fits the app's.

Every test runs real ``vecna-async`` processes against private redis-servers; synchronisation is
by process exit, log lines or Redis state, each with a deadline.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import redis

from tests.integration.test_cli import APP, PYTHON_M, READY_LINE, cli_process
from tests.support.redis_procs import RedisProcess, free_port
from tests.support.vecna import clean_env, eventually, tuned, worker_env
from tests.support.workers import read_log, run_cli, wait_exit
from vecna_async import Config, Server, Signature

PASSWORD = "right-password"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisProcess]:
    """A Redis with a password, an ACL user without channel rights (Redis 7's default for new
    users) and one that may only use vecna's channels."""
    with RedisProcess(password=PASSWORD) as proc:
        client = proc.client()
        common = {"enabled": True, "passwords": ["+pw"], "keys": ["*"], "commands": ["+@all"]}
        client.acl_setuser("nochan", reset_channels=True, **common)  # type: ignore[arg-type]
        client.acl_setuser("app", reset_channels=True, channels=["vecna:*"], **common)  # type: ignore[arg-type]
        client.close()
        yield proc


def one_error_line(done: object, *words: str) -> str:
    stderr: str = done.stderr  # type: ignore[attr-defined]
    assert done.returncode == 1, done  # type: ignore[attr-defined]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("vecna-async: "), lines[0]
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def env_with(**variables: str) -> dict[str, str]:
    env = clean_env()
    env.update(variables)
    return env


# -- configuration errors at load (item 1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "words"),
    [
        ({"VECNA_BROKR": "redis://127.0.0.1:1/0"}, ["VECNA_BROKR", "VECNA_BROKER"]),
        ({"VECNA_BROKER": ""}, ["VECNA_BROKER", "empty"]),
        ({"VECNA_BROKER": "htp://127.0.0.1:1/0"}, ["VECNA_BROKER", "unknown scheme 'htp'"]),
        ({"VECNA_REDIS_TLS_CA_CERTS": "/nonexistent/ca.pem"}, ["VECNA_REDIS_TLS_CA_CERTS"]),
        ({"VECNA_REDIS_MAX_ACTIVE": "lots"}, ["VECNA_REDIS_MAX_ACTIVE"]),
    ],
)
def test_a_configuration_error_stops_the_worker_at_load(
    variables: dict[str, str], words: list[str]
) -> None:
    done = run_cli([*PYTHON_M, "worker", APP], env_with(**variables))
    one_error_line(done, "vecna-async: error: environment: ", *words)


# -- fail fast at start (item 3) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "reply"),
    [(":wrong-password@", "WRONGPASS"), ("", "NOAUTH"), ("app:nope@", "WRONGPASS")],
    ids=["wrong-password", "no-password", "wrong-user-password"],
)
def test_refused_credentials_stop_a_starting_worker_at_once(
    locked_redis: RedisProcess, auth: str, reply: str
) -> None:
    url = f"redis://{auth}127.0.0.1:{locked_redis.port}/0"
    started = time.monotonic()
    done = run_cli([*PYTHON_M, "worker", APP], env_with(VECNA_BROKER=url))
    line = one_error_line(done, "vecna-async: error: ", reply)
    assert time.monotonic() - started < 15
    assert "wrong-password" not in line


def test_the_password_from_a_secret_file_is_used(
    locked_redis: RedisProcess, tmp_path: Path
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(f"{PASSWORD}\n")
    env = env_with(
        VECNA_BROKER=f"redis://127.0.0.1:{locked_redis.port}/0",
        VECNA_REDIS_PASSWORD_FILE=str(secret),
    )
    done = run_cli([*PYTHON_M, "check", APP], env)
    assert done.returncode == 0, done
    assert done.stdout.startswith("ok: Redis at "), done.stdout


def test_an_acl_user_without_channel_rights_is_refused_at_start(locked_redis: RedisProcess) -> None:
    url = f"redis://nochan:pw@127.0.0.1:{locked_redis.port}/0"
    done = run_cli([*PYTHON_M, "worker", APP], env_with(VECNA_BROKER=url))
    one_error_line(done, "NOPERM", "ACL SETUSER <user> &vecna:*")


@pytest.mark.anyio
async def test_an_acl_user_with_vecna_channels_starts_without_warnings(
    locked_redis: RedisProcess, tmp_path: Path
) -> None:
    """The noise of item 11: a worker whose user may not subscribe logged "scheduler wake-up
    subscription lost" again and again; with the rights granted, a start logs no WARNING other
    than the (real) persistence warning of this test Redis."""
    config = Config(broker=f"redis://app:pw@127.0.0.1:{locked_redis.port}/0")
    log = tmp_path / "worker.log"
    argv = [*PYTHON_M, "worker", APP, "--log-format", "json", "--name", "acl-worker"]
    async with cli_process(argv, config, log) as proc:
        await eventually(lambda: _async(READY_LINE in read_log(log)), timeout=20)
        await anyio.sleep(1.0)  # a lost subscription is retried every 0.5 s: give it the time
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
    records = [json.loads(line) for line in read_log(log).splitlines()]
    warnings = [r for r in records if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert [w["logger"] for w in warnings] == ["vecna_async.preflight"], warnings
    assert "keeps nothing on disk" in warnings[0]["message"]


def test_startup_timeout_bounds_the_wait_for_an_unreachable_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    done = run_cli(
        [*PYTHON_M, "worker", APP, "--startup-timeout", "1.5", "--log-level", "ERROR"],
        env_with(VECNA_BROKER=url),
    )
    took = time.monotonic() - started
    one_error_line(done, "startup timeout of 1.5s", "cannot reach Redis")
    assert took < 15, took


def test_processes_does_not_restart_a_worker_that_cannot_start(locked_redis: RedisProcess) -> None:
    url = f"redis://:wrong-password@127.0.0.1:{locked_redis.port}/0"
    done = run_cli([*PYTHON_M, "worker", APP, "--processes", "2"], env_with(VECNA_BROKER=url))
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert lines, done.stderr
    assert all("WRONGPASS" in line for line in lines), done.stderr
    assert "restarting" not in done.stderr


# -- --processes 1 supervises (issue 10, item 9) --------------------------------------------------


@pytest.mark.anyio
async def test_processes_1_restarts_a_worker_that_died(
    config: Config, server: Server, tmp_path: Path
) -> None:
    log = tmp_path / "supervisor.log"
    argv = [*PYTHON_M, "worker", APP, "--processes", "1", "--name", "solo"]
    async with cli_process(argv, config, log) as proc:
        await eventually(lambda: _async(READY_LINE in read_log(log)), timeout=20)
        await server.send_task(Signature("crash"))  # os._exit(1) in the worker process
        await eventually(lambda: _async("restarting it" in read_log(log)), timeout=20)
        r = await server.send_task(Signature("whoami", args=[0.0]))
        assert await r.get(timeout=20) != proc.pid  # a new child ran it
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0


def test_help_says_what_happens_without_processes() -> None:
    done = run_cli([*PYTHON_M, "worker", "--help"])
    assert done.returncode == 0, done
    text = " ".join(done.stdout.split())
    assert "without it the worker runs in this process" in text
    for option in ("--startup-timeout", "--log-format", "--no-log-config"):
        assert option in text


# -- the health probe (item 4) --------------------------------------------------------------------


def test_check_without_a_worker(config: Config, locked_redis: RedisProcess) -> None:
    env = worker_env(config)
    done = run_cli([*PYTHON_M, "check", APP], env)
    assert done.returncode == 0, done
    assert done.stdout.startswith("ok: Redis at redis://127.0.0.1:"), done.stdout
    done = run_cli([*PYTHON_M, "check", "--broker", config.broker, "--any-worker"], env)
    one_error_line(done, "vecna-async: check failed: ", "no live worker at all")
    down = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli([*PYTHON_M, "check", "--broker", down, "--timeout", "2"], clean_env())
    one_error_line(done, "vecna-async: check failed: ", "cannot reach Redis")
    wrong = f"redis://:nope@127.0.0.1:{locked_redis.port}/0"
    done = run_cli([*PYTHON_M, "check", "--broker", wrong], clean_env())
    one_error_line(done, "WRONGPASS")
    done = run_cli([*PYTHON_M, "check"], clean_env())
    assert done.returncode == 2, done


@pytest.mark.anyio
async def test_check_follows_a_worker_from_start_to_graceful_stop(
    config: Config, tmp_path: Path
) -> None:
    env = worker_env(config)
    log = tmp_path / "worker.log"

    def check(*flags: str) -> int:
        return run_cli([*PYTHON_M, "check", "--broker", config.broker, *flags], env).returncode

    async with cli_process([*PYTHON_M, "worker", APP, "--name", "probe-me"], config, log) as proc:
        await eventually(lambda: _async(check("--worker", "probe-me") == 0), timeout=20)
        done = run_cli([*PYTHON_M, "check", APP, "--worker", "probe-*"], env)
        assert done.returncode == 0, done
        assert "worker 'probe-me' alive, last seen" in done.stdout
        assert check("--any-worker") == 0
        assert check("--worker", "someone-else") == 1
        names = {c["name"] for c in redis.Redis.from_url(config.broker).client_list()}
        assert "vecna:probe-me" in names, names
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
        assert check("--worker", "probe-me") == 1  # it left the registry as it stopped


@pytest.mark.anyio
async def test_a_killed_worker_drops_out_of_the_registry_by_itself(
    config: Config, tmp_path: Path
) -> None:
    config = tuned(config, heartbeat_interval=0.3)  # drops out after 3 intervals
    env = worker_env(config)
    argv = [*PYTHON_M, "worker", APP, "--name", "doomed"]
    async with cli_process(argv, config, tmp_path / "worker.log") as proc:
        probe = [*PYTHON_M, "check", "--broker", config.broker, "--worker", "doomed"]
        await eventually(lambda: _async(run_cli(probe, env).returncode == 0), timeout=20)
        proc.kill()
        await proc.wait()
        await eventually(lambda: _async(run_cli(probe, env).returncode == 1), timeout=10)


# -- logging that fits the app (item 5; issue 10, item 10) -----------------------------------------


@pytest.mark.anyio
async def test_json_logs_carry_task_fields_and_one_info_line_per_received_and_succeeded(
    config: Config, server: Server, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    argv = [*PYTHON_M, "worker", APP, "--log-format", "json", "--name", "json-worker"]
    async with cli_process(argv, config, log) as proc:
        await eventually(lambda: _async(READY_LINE in read_log(log)), timeout=20)
        r = await server.send_task(Signature("slow", args=[3, 0.0]))
        assert await r.get(timeout=15) == 3
        await eventually(lambda: _async("succeeded in" in read_log(log)), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
    records = [json.loads(line) for line in read_log(log).splitlines()]
    mine = [rec for rec in records if rec.get("task_id") == r.task_id]
    assert [rec["message"].split(") ", 1)[1][:9] for rec in mine] == ["received", "succeeded"]
    for rec in mine:
        assert rec["level"] == "INFO"
        assert (rec["task_name"], rec["queue"], rec["worker"]) == (
            "slow",
            "vecna_tasks",
            "json-worker",
        )
    assert all(
        rec["worker"] == "json-worker" for rec in records if rec["logger"] == "vecna_async.worker"
    )


def test_the_apps_own_logging_setup_is_kept(config: Config) -> None:
    """The app configures logging at import (its own format): the CLI leaves it alone; with
    --no-log-config the CLI configures nothing even if the app did not."""
    env = worker_env(config)
    env["VECNA_BROKER"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing there: a quick exit
    argv = [*PYTHON_M, "worker", "tests.apps.logging_app:server", "--startup-timeout", "0.5"]
    done = run_cli(argv, env)
    assert done.returncode == 1, done
    waits = [line for line in done.stderr.splitlines() if "startup checks wait" in line]
    assert waits, done.stderr
    assert all(line.startswith("APP-FORMAT WARNING ") for line in waits), done.stderr
    env["APP_LOGGING"] = "off"
    done = run_cli([*argv, "--no-log-config"], env)
    assert done.returncode == 1, done
    assert "startup checks wait" in done.stderr  # Python's last-resort handler: WARNING and up
    assert " WARNING vecna_async" not in done.stderr  # but not in the CLI's text format


async def _async(value: bool) -> bool:
    return value
