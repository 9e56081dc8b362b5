"""The worker registry: which workers are alive, written by each worker and read by ``check``.

A running worker keeps a HASH about itself in Redis (host, pid, queues, concurrency, tasks
running, started, last seen, tasks done and failed: the fields of ``WorkerInfo``) and its name in
an index scored by its last heartbeat (keys.py: ``{workers}:index`` and ``{workers}:w:<name>``,
one hash tag, so each call is one atomic script on one Cluster slot). It refreshes both every
``heartbeat_interval``; the HASH expires after ``PRESENCE_BEATS`` intervals without one, so a
worker that was killed, hangs or lost its network drops out by itself, and a worker that stops
gracefully removes itself at once. Times are Redis's clock, so hosts with skewed clocks agree.

Two workers given the same name share one entry: give each process its own name (the command
line's default, ``<host>-<pid>``, is unique).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from vecna_async.broker.redis import unavailable_as
from vecna_async.connection import AnyRedis, text
from vecna_async.keys import Keys
from vecna_async.scripts import script

log = logging.getLogger("vecna_async.worker")
PRESENCE_BEATS = 3
"""Heartbeat intervals without a heartbeat after which a worker no longer counts as alive."""
LIST_LIMIT = 10_000
BACKOFF_CAP = 5.0


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as its last heartbeat described it."""

    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int  # 0: unlimited
    running: int  # tasks it holds (claimed and not yet settled)
    started: datetime
    last_seen: datetime
    done: int  # tasks it finished with success since it started
    failed: int  # tasks it finished with a failure since it started

    def seen_ago(self, now: datetime) -> float:
        """Seconds between its last heartbeat and ``now`` (Redis's clock)."""
        return max(0.0, (now - self.last_seen).total_seconds())


Stats = Callable[[], tuple[int, int, int]]
"""Returns (running, done, failed) for the next heartbeat."""


class Presence:
    """Keeps one worker's entry in the registry while ``run`` runs; ``leave`` removes it."""

    def __init__(
        self,
        client: AnyRedis,
        keys: Keys,
        where: str,
        *,
        name: str,
        queues: list[str],
        concurrency: int,
        interval: float,
        stats: Stats,
    ) -> None:
        self._client = client
        self._keys = keys
        self._where = where
        self._name = name
        self._interval = interval
        self._stats = stats
        self._static = [
            "host", socket.gethostname(), "pid", os.getpid(), "queues", ",".join(queues),
            "concurrency", concurrency,
        ]  # fmt: skip

    async def run(self) -> None:
        """Heartbeat every interval until cancelled; an outage is waited out (the consumer and the
        lease heartbeat already report it), and the entry expires meanwhile if it lasts."""
        pause = self._interval
        while True:
            try:
                await self.beat()
                pause = self._interval
            except Exception as exc:
                log.debug("worker %s: registry heartbeat failed (%s)", self._name, exc)
                pause = min(pause * 2, max(self._interval, BACKOFF_CAP))  # spare a sick Redis
            await anyio.sleep(pause)

    async def beat(self) -> None:
        running, done, failed = self._stats()
        ttl_ms = int(self._interval * PRESENCE_BEATS * 1000)
        args = [
            self._keys.worker_prefix, self._name, ttl_ms, *self._static,
            "running", running, "done", done, "failed", failed,
        ]  # fmt: skip
        async with unavailable_as(self._where, "recording the worker's heartbeat"):
            await script("presence_beat")(self._client, [self._keys.workers_index], args)

    async def leave(self) -> None:
        """Remove the entry now (a graceful stop); if Redis is unreachable it expires later."""
        args = [self._keys.worker_prefix, self._name]
        try:
            with anyio.fail_after(2.0):
                async with unavailable_as(self._where, "removing the worker from the registry"):
                    await script("presence_leave")(self._client, [self._keys.workers_index], args)
        except Exception as exc:
            log.debug("worker %s: could not leave the registry (%s); it expires", self._name, exc)


async def registered_workers(
    client: AnyRedis, keys: Keys, where: str
) -> tuple[datetime, list[WorkerInfo]]:
    """Redis's time and the live workers, most recently seen first. The index entries of
    expired workers are skipped, not pruned (the heartbeats prune them), so a look (``vecna-async
    inspect``, ``vecna-async check``) never writes."""
    async with unavailable_as(where, "listing workers"):
        seconds, micros = await client.time()
        names = [text(n) for n in await client.zrevrange(keys.workers_index, 0, LIST_LIMIT - 1)]
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.worker(name))
            hashes = await pipe.execute()
    workers = [
        _info(name, {text(k): text(v) for k, v in fields.items()})
        for name, fields in zip(names, hashes, strict=True)
        if fields
    ]
    return _time(int(seconds) * 1000 + int(micros) // 1000), workers


def _info(name: str, f: dict[str, str]) -> WorkerInfo:
    def number(key: str) -> int:
        try:
            return int(f.get(key, "0"))
        except ValueError:  # a hand edit: show the worker rather than fail the listing
            return 0

    return WorkerInfo(
        name=name,
        host=f.get("host", ""),
        pid=number("pid"),
        queues=[q for q in f.get("queues", "").split(",") if q],
        concurrency=number("concurrency"),
        running=number("running"),
        started=_time(number("started")),
        last_seen=_time(number("last_seen")),
        done=number("done"),
        failed=number("failed"),
    )


def _time(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)
