"""``vecna-async check``: is Redis answering, and (if asked) is a worker alive?

Made for a Kubernetes probe or a load balancer's health check: the answer is the exit status (0
healthy, 1 not) and one line saying why. Redis must answer a PING within the time given; with
``worker`` (a name, or a glob pattern such as ``web-7d9f-*``) a live worker of that name must be
in the worker registry (``worker/presence.py``: a worker that stopped heartbeating drops out
after three heartbeat intervals), with ``any_worker`` any live worker at all.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

import anyio

from vecna_async.exceptions import VecnaError
from vecna_async.redis_errors import redis_errors
from vecna_async.server import Server
from vecna_async.worker.presence import registered_workers


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    line: str


async def check(
    server: Server, *, worker: str | None = None, any_worker: bool = False, timeout: float = 5.0
) -> Verdict:
    """Check within ``timeout`` seconds; never raises for what it finds (that is the verdict)."""
    where = "Redis"
    try:
        with anyio.fail_after(timeout):
            async with server.connection() as rt:
                where = f"Redis at {rt.broker.where}"
                began = time.perf_counter()
                with redis_errors(rt.broker.where, "to PING"):
                    await rt.broker_clients.main.ping()
                answered = f"{where} answers ({(time.perf_counter() - began) * 1000:.1f} ms)"
                if worker is None and not any_worker:
                    return Verdict(True, answered)
                now, workers = await registered_workers(
                    rt.broker_clients.main, rt.keys, rt.broker.where
                )
    except TimeoutError:
        return Verdict(False, f"{where} did not answer within {timeout:g}s")
    except VecnaError as exc:
        return Verdict(False, str(exc))
    if worker is not None:
        matching = [w for w in workers if fnmatch.fnmatchcase(w.name, worker)]
    else:
        matching = workers
    if not matching:
        wanted = f"named {worker!r}" if worker is not None else "at all"
        live = ", ".join(w.name for w in workers[:10]) or "none"
        return Verdict(False, f"{answered}, but no live worker {wanted} (live workers: {live})")
    w = matching[0]  # the most recently seen
    others = f" (+{len(matching) - 1} more)" if len(matching) > 1 else ""
    return Verdict(
        True,
        f"{answered}; worker {w.name!r}{others} alive, last seen {w.seen_ago(now):.1f}s ago, "
        f"{w.running} running, {w.done} done, {w.failed} failed",
    )
