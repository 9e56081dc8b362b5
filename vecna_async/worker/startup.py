"""A worker's start: wait for Redis (for at most its startup timeout), run the startup checks,
name its connections, write the declared schedules.

At start, and only then, the worker tells an outage from a mistake. Redis not reachable yet (a
container started before Redis, a failover in progress) is waited out, up to
``Worker.startup_timeout`` seconds (``--startup-timeout``; None: as long as it takes), then
``BrokerUnavailable``. Anything else -- a wrong password (``WRONGPASS``/``NOAUTH``), an ACL that
refuses a command or the channels (``NOPERM``), a Redis older than 7.0 -- is raised at once: no
amount of retrying fixes it, and a worker that stops with one clear line is what an
orchestrator and its operator need. Once running, the worker waits out every outage as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from redis.asyncio.cluster import RedisCluster

from vecna_async.connection import connection_name, name_connections
from vecna_async.exceptions import BrokerRefused, BrokerUnavailable
from vecna_async.redis_errors import is_transient, redis_errors

if TYPE_CHECKING:
    from vecna_async.runtime import Runtime
    from vecna_async.server import Server

log = logging.getLogger("vecna_async.worker")


async def wait_for_redis(
    rt: Runtime, name: str, timeout: float | None, stopping: Callable[[], bool]
) -> None:
    """Run the startup checks (``Runtime.preflight``), retrying while Redis cannot be reached,
    until they pass, ``stopping()`` is true, or ``timeout`` seconds passed (BrokerUnavailable)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.1
    last: Exception | None = None
    while not stopping():
        left = None if deadline is None else deadline - time.monotonic()
        try:
            with anyio.fail_after(left):
                await rt.preflight()
            return
        except (BrokerUnavailable, TimeoutError) as exc:
            last = exc if isinstance(exc, BrokerUnavailable) or last is None else last
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise BrokerUnavailable(
                    f"worker {name}: Redis not reachable within the startup timeout of "
                    f"{timeout:g}s ({last or 'no reply'})"
                ) from exc
            log.warning("worker %s: startup checks wait for Redis: %s", name, exc)
            await anyio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 5.0)


async def name_worker_connections(rt: Runtime, name: str) -> None:
    """Name the connections the worker opens from now on ``vecna:<worker name>`` (``CLIENT
    LIST`` shows who is who). An ACL that refuses ``CLIENT SETNAME`` leaves them unnamed rather
    than fail every connection."""
    client_name = connection_name(name)
    client = rt.broker_clients.main
    try:
        with redis_errors(rt.broker_clients.target.describe(), "naming its connections"):
            if isinstance(client, RedisCluster):  # a command without a key: name any node
                node = client.get_random_node()
                await client.execute_command("CLIENT", "SETNAME", client_name, target_nodes=node)
            else:
                await client.client_setname(client_name)
    except BrokerRefused as exc:
        if exc.reply.startswith("NOPERM"):
            log.info("worker %s: connections stay unnamed (%s)", name, exc.reply)
            return
        raise
    for c in rt.clients():
        await name_connections(c, client_name)


async def write_declared_schedules(server: Server, name: str, stopping: Callable[[], bool]) -> None:
    """Write the Server's declared schedules (``@server.periodic``), retried while Redis is
    unreachable or refusing for now; any other error ends the start (the schedule cannot be
    stored)."""
    delay = 0.1
    while not stopping():
        try:
            await server.write_declared_schedules()
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("worker %s: declared schedules wait for Redis: %s", name, exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
