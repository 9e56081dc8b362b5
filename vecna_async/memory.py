"""``memory://``: the broker and the result backend in this process, no Redis (tests, demos).

One implementation of the delivery logic, not two: the very Lua scripts that run in Redis
(``vecna_async/lua``) run here in fakeredis, an in-process Redis (its data types and commands in
Python, Lua through lupa). Everything above the clients -- broker, backend, workers, schedulers,
pub/sub wake-ups -- is the Redis code, on a ``redis.asyncio.Redis`` whose connections talk to
fakeredis instead of a socket. What fakeredis lacks is supplied here:

- ``cmsgpack`` (Redis's Lua msgpack library, which the scripts use to read packed arguments):
  ``lua/_cmsgpack.lua``, a decoder in plain Lua, is put in front of every script sent to a
  memory store (``MemoryRedis``); the script cache maps each script's SHA to its memory form,
  so ``EVALSHA`` with the usual SHA still runs the cached script.
- a compiled-script cache: fakeredis compiles a script's text at every call, so the memory
  form compiles it once and keeps the function (``_compiled_once``).

Stores: ``memory://`` is the process's default store, ``memory://<name>`` a named one; every
Server of the process with the same URL sees the same data (a test's producer and its worker
meet there), until the process ends or ``discard(url)`` drops it. Nothing of a store is shared
with another process: the command line refuses a memory:// Server (``refuse_other_process``).

What it does not do: survive the process, reach other processes, WAIT for replicas
(``wait_replicas`` > 0 is refused at load), Sentinel, Cluster or TLS (other URL schemes);
the startup checks (INFO, CONFIG, ACL channels) are skipped, and credentials are ignored.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from vecna_async.exceptions import ConfigError

if TYPE_CHECKING:
    from fakeredis import FakeServer
    from redis.asyncio import Redis

    from vecna_async.connection import RedisClients, RedisTarget

EXTRA_HINT = "memory:// needs fakeredis and lupa: pip install 'vecna_async[memory]'"

OTHER_PROCESS = (
    "memory:// keeps its data in this process: run the worker in the same process "
    "(await server.new_worker(...).launch()) or use a Redis URL"
)

REDIS_VERSION = (7, 0)
"""The Redis version a store claims: the oldest vecna_async supports (nothing newer slips in)."""

_stores: dict[str, FakeServer] = {}
_stores_lock = threading.Lock()


def check_config(broker: str, backend: str | None, wait_replicas: int) -> None:
    """What a Config on memory:// cannot ask for, as a ConfigError at load: a broker and a
    result backend one of which is in this process and the other in Redis (a worker elsewhere
    could not reach the first), ``wait_replicas`` (there are no replicas), or a memory:// without
    the extra installed (checked without importing it)."""
    in_memory = [url.startswith("memory://") for url in (broker, backend or broker)]
    if not any(in_memory):
        return
    if not all(in_memory):
        raise ConfigError(
            "broker and result_backend: memory:// for one and Redis for the other cannot work "
            "(a worker in another process would reach only one); use memory:// for both"
        )
    if wait_replicas:
        raise ConfigError(
            "redis.wait_replicas: memory:// has no replicas to wait for; set 0, got "
            f"{wait_replicas}"
        )
    for module in ("fakeredis", "lupa"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(EXTRA_HINT)


def store_name(rest: str) -> str:
    """The store's name from what follows ``memory://`` (``""``: the default store)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", rest):
        raise ValueError(
            "expected memory:// or memory://<name> (a name of letters, digits, '-', '_', '.')"
        )
    return rest


def discard(url: str = "memory://") -> None:
    """Drop the store ``url`` names, with everything in it (a test's clean slate). A Server
    still using it keeps the old data; one opened later starts empty."""
    name = store_name(url.removeprefix("memory://"))
    with _stores_lock:
        _stores.pop(name, None)


def refuse_other_process(broker: str, backend: str | None) -> None:
    """ConfigError when a Server meant for another process (the command line: workers,
    ``--processes``, ``check``) is on memory://: its data could not reach this one."""
    if any((url or "").startswith("memory://") for url in (broker, backend)):
        raise ConfigError(OTHER_PROCESS)


def open_memory_clients(target: RedisTarget) -> RedisClients:
    """The clients of a Server on the store ``target`` names (created on first use)."""
    from vecna_async.connection import RedisClients

    server = _store(target.store)
    redis_class = _memory_redis_class()
    return RedisClients(target, redis_class(server=server), redis_class(server=server))


def redis_client(url: str = "memory://", **kwargs: Any) -> Redis:
    """A plain ``redis.asyncio.Redis`` on the store ``url`` names, to look at its keys as a
    test would with ``redis.asyncio.Redis.from_url`` on Redis (``decode_responses=True`` ...)."""
    name = store_name(url.removeprefix("memory://"))
    client: Redis = _memory_redis_class()(server=_store(name), **kwargs)
    return client


def _store(name: str) -> FakeServer:
    from fakeredis import FakeServer

    with _stores_lock:
        server = _stores.get(name)
        if server is None:
            server = _stores[name] = FakeServer(version=REDIS_VERSION)
        return server


@cache
def _memory_redis_class() -> type[Any]:
    """``MemoryRedis``, built on first use so that importing this module needs no fakeredis."""
    from fakeredis import FakeAsyncRedis

    class MemoryRedis(FakeAsyncRedis):
        """A ``redis.asyncio.Redis`` on a fakeredis store that runs vecna's scripts."""

        pinnable = False
        """``PinnedConnection`` writes RESP on a socket; fakeredis's connections have none."""

        async def execute_command(self, *args: Any, **options: Any) -> Any:
            if args and args[0] in ("EVALSHA", "EVAL"):
                args = _for_memory(args)
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    return MemoryRedis


_memory_sha: dict[str, str] = {}
"""The SHA of a script as Redis runs it -> the SHA of its memory form."""


def _for_memory(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """An ``EVAL`` with the decoder in front of the script; an ``EVALSHA`` naming the memory
    form of its script (unknown: the store answers NOSCRIPT, and ``Script`` sends the EVAL)."""
    command, body, *rest = args
    if command == "EVALSHA":
        return (command, _memory_sha.get(body, body), *rest)
    source = body.decode() if isinstance(body, bytes) else body
    memory_source = _compiled_once(_sha(source), f"{_decoder()}\n{source}")
    _memory_sha[_sha(source)] = _sha(memory_source)
    return (command, memory_source, *rest)


def _compiled_once(key: str, source: str) -> str:
    """``source`` as a chunk that compiles it on its first run only and keeps the function in
    the store's Lua (``package.loaded``, a table, not a global: scripts may set none).

    fakeredis compiles a script's text at every call, and compiling ours (with ``_lib.lua``)
    costs about 0.4 ms; a long string is only scanned. Each run still calls the whole chunk
    afresh: its locals are new every time, as in Redis."""
    level = "="
    while f"]{level}]" in source:
        level += "="
    slot = f"package.loaded['vecna:{key}']"
    return (
        f"local run = {slot}\n"
        f"if not run then\n"
        f"  run = assert((loadstring or load)([{level}[{source}]{level}], '@vecna:{key[:8]}'))\n"
        f"  {slot} = run\n"
        f"end\n"
        f"return run()\n"
    )


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


@cache
def _decoder() -> str:
    return (resources.files("vecna_async") / "lua" / "_cmsgpack.lua").read_text()
