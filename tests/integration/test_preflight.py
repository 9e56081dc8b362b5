"""Startup checks (``vecna_async.preflight``) against private redis-servers started with the
settings being judged, and the command line's one-line error for a startup VecnaError.

The version check cannot be driven here (the installed Redis is 7.x); ``tests/unit/
test_preflight_verdict.py`` covers it on parsed INFO fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from tests.support.redis_procs import RedisClusterSet, RedisProcess
from tests.support.vecna import clean_env, running_worker
from tests.support.workers import run_cli
from vecna_async import Config, RedisConfig, Server, Signature
from vecna_async.connection import open_clients, parse_url
from vecna_async.preflight import check_redis

pytestmark = pytest.mark.anyio

EVICTS = "evicts keys under memory pressure (maxmemory-policy allkeys-lru)"
NO_DISK = "keeps nothing on disk"


def preflight_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vecna_async.preflight" and r.levelno == logging.WARNING
    ]


async def echo(x: int) -> int:
    return x


@pytest.fixture
def lru_redis() -> Iterator[RedisProcess]:
    """Evicts under memory pressure, keeps an AOF."""
    with RedisProcess(extra_args=["--maxmemory-policy", "allkeys-lru", "--appendonly", "yes"]) as p:
        yield p


@pytest.fixture
def diskless_redis() -> Iterator[RedisProcess]:
    """``--save "" --appendonly no``, spelled out (RedisProcess's defaults anyway)."""
    with RedisProcess(extra_args=["--save", "", "--appendonly", "no"]) as p:
        yield p


def own_config(url: str, redis_config: RedisConfig) -> Config:
    return Config(broker=url, results_expire_in=600, shutdown_grace=2.0, redis=redis_config)


async def test_worker_warns_once_about_eviction(
    lru_redis: RedisProcess, redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vecna_async")
    async with Server(own_config(lru_redis.url, redis_config)) as srv:
        srv.register_task("echo", echo)
        async with running_worker(srv), srv.scheduler():  # a second start in the same runtime
            assert await (await srv.send_task(Signature("echo", args=[1]))).get(timeout=10) == 1
    warnings = preflight_warnings(caplog)
    assert len(warnings) == 1, warnings
    (text,) = warnings
    assert text == (
        f"Redis at redis://127.0.0.1:{lru_redis.port}/0 {EVICTS}: queued tasks and results can "
        "silently disappear; set maxmemory-policy noeviction"
    )


async def test_worker_warns_about_no_persistence(
    diskless_redis: RedisProcess, redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vecna_async")
    async with Server(own_config(diskless_redis.url, redis_config)) as srv:
        srv.register_task("echo", echo)
        async with running_worker(srv):
            assert await (await srv.send_task(Signature("echo", args=[2]))).get(timeout=10) == 2
    warnings = preflight_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert NO_DISK in warnings[0]
    assert "a restart loses every queued task; enable appendonly yes" in warnings[0]
    assert f"127.0.0.1:{diskless_redis.port}" in warnings[0]


async def test_rdb_save_points_or_aof_count_as_persistence(redis_config: RedisConfig) -> None:
    for args in (["--save", "3600 1"], ["--appendonly", "yes"]):
        with RedisProcess(extra_args=args) as proc:
            client = aioredis.Redis(host=proc.host, port=proc.port)
            try:
                assert await check_redis(client, proc.url) == [], args
            finally:
                await client.aclose()


async def test_config_disabled_judges_aof_only() -> None:
    """Managed Redis often refuses CONFIG: the RDB save points are unknown, only AOF is judged."""
    with RedisProcess(extra_args=["--rename-command", "CONFIG", ""]) as proc:
        client = aioredis.Redis(host=proc.host, port=proc.port)
        try:
            (warning,) = await check_redis(client, proc.url)
            assert "AOF off" in warning
            assert "CONFIG GET save is refused" in warning
        finally:
            await client.aclose()
    with RedisProcess(extra_args=["--rename-command", "CONFIG", "", "--appendonly", "yes"]) as p:
        client = aioredis.Redis(host=p.host, port=p.port)
        try:
            assert await check_redis(client, p.url) == []
        finally:
            await client.aclose()


async def test_runtime_preflight_runs_once(
    lru_redis: RedisProcess, redis_config: RedisConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vecna_async")
    plain = aioredis.Redis(host=lru_redis.host, port=lru_redis.port)

    async def info_calls() -> int:
        stats = await plain.info("commandstats")
        return int(stats.get("cmdstat_info", {}).get("calls", 0))

    try:
        srv = Server(own_config(lru_redis.url, redis_config))
        async with srv, srv.connection() as rt:
            before = await info_calls()
            first = await rt.preflight()
            second = await rt.preflight()
            # 3 INFO sections for the checks (+1: our own commandstats read)
            assert await info_calls() - before == 3 + 1
        assert first == second
        assert len(first) == 1
        assert EVICTS in first[0]
        assert len(preflight_warnings(caplog)) == 1
    finally:
        await plain.aclose()


async def test_cluster_checks_every_master() -> None:
    with RedisClusterSet(masters=3) as cluster:
        target = parse_url(cluster.url)
        clients = open_clients(target, RedisConfig())
        try:
            warnings = await check_redis(clients.main, target.describe())
        finally:
            await clients.close()
        assert len(warnings) == 3, warnings
        assert all(NO_DISK in w for w in warnings)
        named = {w.split("(master ", 1)[1].split(")", 1)[0] for w in warnings}
        assert named == {f"{h}:{p}" for h, p in cluster.startup_nodes}


# -- the command line --------------------------------------------------------------------------


def test_cli_startup_vecna_error_is_one_line_exit_1(redis_url: str) -> None:
    """A VecnaError at startup (here a ConfigError from VECNA_SIGNING_KEYS while importing the
    app) is one ``vecna-async: error:`` line and exit status 1, without the key."""
    short_key = "tooshort-secret"
    env = clean_env()
    env.update(VECNA_BROKER=redis_url, VECNA_SIGNING_KEYS=f"a-long-enough-key-0123,{short_key}")
    done = run_cli(
        [sys.executable, "-m", "vecna_async", "worker", "tests.apps.delivery_app:server"], env
    )
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vecna-async: error: "), lines[0]
    assert "VECNA_SIGNING_KEYS" in lines[0]
    assert "Traceback" not in done.stderr
    assert short_key not in done.stderr
