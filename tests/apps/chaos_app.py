"""The Server the chaos tests run in worker subprocesses (``tests/chaos``).

Configured from the environment (``VECNA_*``, see ``Config.from_env``). Every task records each
of its runs in the **ledger**, a Redis of its own at ``CHAOS_LEDGER_URL`` that the tests never
fault, under ``<key prefix>:`` (the vecna key prefix, unique per test):

* ``runs``  HASH  task id -> how many runs started;
* ``ended`` HASH  task id -> how many runs returned;
* ``starts`` / ``ends`` LIST of ``"<task id> <pid> <epoch ms>"``, one per run start / return, so a
  test can tell which process ran a task twice and whether that process was killed meanwhile;
* ``results:<task id>`` LIST of what the chord callback ``gather`` received, one entry per run.

Tasks take their own task id as the first argument (the tests set ``Signature(id=...)`` and
pass the same id), except ``tick``, the periodic task: a periodic firing's id is derived from
(code, tick) by the scheduler, so ``tick`` looks its message up on the stack (see
:func:`current_task_id`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import anyio
import redis.asyncio as aioredis

from vecna_async import Config, Server
from vecna_async.messages import TaskMessage

server = Server(Config.from_env())

_ledger: aioredis.Redis | None = None


def ledger_key(name: str) -> str:
    """A ledger key of this app's key prefix (the tests build the same names)."""
    return f"{server.config.redis.key_prefix}:{name}"


def _client() -> aioredis.Redis:
    global _ledger
    if _ledger is None:
        _ledger = aioredis.Redis.from_url(os.environ["CHAOS_LEDGER_URL"])
    return _ledger


def _entry(task_id: str) -> str:
    return f"{task_id} {os.getpid()} {int(time.time() * 1000)}"


async def begin(task_id: str) -> int:
    """Record that a run of ``task_id`` starts in this process; returns its run number (1, 2..)."""
    async with _client().pipeline(transaction=False) as pipe:
        pipe.hincrby(ledger_key("runs"), task_id, 1)
        pipe.rpush(ledger_key("starts"), _entry(task_id))
        run, _ = await pipe.execute()
    return int(run)


async def end(task_id: str) -> None:
    """Record that a run of ``task_id`` returns (its outcome is settled after this)."""
    async with _client().pipeline(transaction=False) as pipe:
        pipe.rpush(ledger_key("ends"), _entry(task_id))
        pipe.hincrby(ledger_key("ended"), task_id, 1)
        await pipe.execute()


def current_task_id() -> str:
    """The id of the message the calling task runs for.

    vecna_async has no task context yet (``Context`` is API contract v2), so this walks up the
    call stack to the worker frame that decoded the message and reads its ``TaskMessage``. It
    raises if none is found, so a worker that stops keeping the message on the stack fails the
    test loudly instead of recording runs under a wrong id.
    """
    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            if isinstance(value, TaskMessage):
                return value.id
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError("no TaskMessage on the stack: cannot tell which firing this run is")


@server.task(name="quick")
async def quick(task_id: str, value: int, max_sleep: float = 0.0) -> int:
    """Record the run, sleep up to ``max_sleep`` seconds (varied by value), return ``value``."""
    await begin(task_id)
    if max_sleep:
        await anyio.sleep(max_sleep * ((value * 7919) % 101) / 100)
    await end(task_id)
    return value


@server.task(name="nap")
async def nap(task_id: str, seconds: float) -> int:
    """Record the run, sleep ``seconds``, return the pid of the process that ran it."""
    await begin(task_id)
    await anyio.sleep(seconds)
    await end(task_id)
    return os.getpid()


@server.task(name="nap_by_run")
async def nap_by_run(task_id: str, first: float, later: float) -> int:
    """Like ``nap``, sleeping ``first`` seconds on the first run and ``later`` on every other."""
    run = await begin(task_id)
    await anyio.sleep(first if run == 1 else later)
    await end(task_id)
    return os.getpid()


@server.task(name="suicide")
async def suicide(task_id: str) -> None:
    """Record the run, then SIGKILL the worker process running it (every time)."""
    await begin(task_id)
    os.kill(os.getpid(), signal.SIGKILL)


@server.task(name="member")
async def member(task_id: str, index: int, seconds: float) -> int:
    """A chord member: record the run, sleep, return ``index * index``."""
    await begin(task_id)
    await anyio.sleep(seconds)
    await end(task_id)
    return index * index


@server.task(name="gather")
async def gather(task_id: str, *results: int) -> int:
    """A chord callback: record the run and the results it was given; return their count."""
    await begin(task_id)
    await _client().rpush(ledger_key(f"results:{task_id}"), json.dumps(list(results)))
    await end(task_id)
    return len(results)


@server.task(name="tick")
async def tick() -> None:
    """The periodic task: records its run under the id the scheduler gave this firing."""
    task_id = current_task_id()
    await begin(task_id)
    await end(task_id)
