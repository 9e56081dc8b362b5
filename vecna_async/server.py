"""``Server``: the task registry and the front door for sending. It owns the connections and
delegates the work: messages are built by ``tasks.wire``, queued by the broker, results read through
``AsyncResult``, consumed by a ``Worker``.

>>> server = Server(Config(broker="redis://127.0.0.1:6379/0"))
>>> @server.task(name="add")
... async def add(a: int, b: int) -> int:
...     return a + b
>>> # async with server:
>>> #     r = await add.send(1, 2);  await r.get(timeout=5)  -> 3
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from vecna_async.backend.redis import RedisBackend
from vecna_async.backend.results import AsyncResult
from vecna_async.broker.redis import RedisBroker
from vecna_async.config import Config
from vecna_async.keys import Keys
from vecna_async.runtime import Runtime, open_runtime
from vecna_async.scheduler.scheduler import Scheduler
from vecna_async.tasks.registry import TaskEntry, TaskFunction, TaskHandle, TaskRegistry
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import outgoing, prepare
from vecna_async.worker.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")


class Server:
    """Configuration, registered tasks and the connections to Redis.

    Connections open on first use or with ``async with server`` / ``await server.connect()``;
    ``close()`` (or leaving the ``async with``) closes them.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.id = uuid.uuid4().hex[:16]
        self.keys = Keys(self.config.redis.key_prefix)
        self.registry = TaskRegistry()
        self._rt: Runtime | None = None
        self._users = 0

    # -- connections ---------------------------------------------------------------------------
    def _runtime(self) -> Runtime:
        if self._rt is None:
            self._rt = open_runtime(self.config, self.keys, self.id)
        return self._rt

    async def connect(self) -> None:
        """Build the connection pools (redis.asyncio connects on the first command)."""
        self._runtime()

    async def close(self) -> None:
        """Close the pools and the result listener. The Server can be connected again."""
        rt, self._rt = self._rt, None
        if rt is not None:
            with anyio.CancelScope(shield=True):
                await rt.close()

    async def __aenter__(self) -> Server:
        self._users += 1
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._users -= 1
        if self._users == 0:
            await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Runtime]:
        """The runtime for a worker or scheduler; closes it afterwards only if it opened it."""
        opened = self._rt is None
        try:
            yield self._runtime()
        finally:
            if opened and self._users == 0:
                await self.close()

    # -- registry ------------------------------------------------------------------------------
    def register_task(self, name: str, fn: TaskFunction) -> TaskEntry:
        """Register ``fn`` (async, or sync to run in a thread) under ``name``."""
        return self.registry.register(name, fn)

    def register_tasks(self, tasks: Mapping[str, TaskFunction]) -> None:
        for name, fn in tasks.items():
            self.registry.register(name, fn)

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> TaskHandle[P, R]: ...  # pragma: no cover

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, Awaitable[R]]], TaskHandle[P, R]]: ...  # pragma: no cover

    def task(
        self,
        fn: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> TaskHandle[P, R] | Callable[[Callable[P, Awaitable[R]]], TaskHandle[P, R]]:
        """Register an ``async def`` as a task and return a typed handle.

        ``options`` are Signature options applied to every send (``retry_count=3``,
        ``routing_key="emails"`` ...). ``await handle.send(...)`` is checked by mypy.
        """

        def register(f: Callable[P, Awaitable[R]]) -> TaskHandle[P, R]:
            task_name = name or f.__name__
            self.registry.register(task_name, f)
            return TaskHandle(self, task_name, f, options)

        return register(fn) if fn is not None else register

    # -- sending -------------------------------------------------------------------------------
    async def send_task(self, signature: Signature) -> AsyncResult[Any]:
        """Send one task; returns its AsyncResult. Raises BrokerUnavailable if Redis is down,
        MessageTooLarge for an oversized message (nothing is sent then)."""
        (result,) = await self.send_tasks([signature])
        return result

    async def send_tasks(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many tasks in one round trip per queue (all encoded and checked first)."""
        rt = self._runtime()
        channel = rt.backend.reply_channel
        max_bytes = self.config.redis.max_message_bytes
        sigs = list(signatures)
        msgs = [prepare(s, self.config.default_queue, channel) for s in sigs]
        await rt.broker.publish([outgoing(m, max_bytes) for m in msgs])
        return [AsyncResult(rt.results, m.id, m.queue, s) for s, m in zip(sigs, msgs, strict=True)]

    def result(self, task_id: str, queue: str | None = None) -> AsyncResult[Any]:
        """An AsyncResult for a task id sent elsewhere (queue defaults to ``default_queue``)."""
        return AsyncResult(self._runtime().results, task_id, queue or self.config.default_queue)

    # -- workers and schedulers ----------------------------------------------------------------
    def new_worker(
        self,
        name: str = "",
        concurrency: int = 0,
        *,
        queue: str | None = None,
        scheduler: bool = True,
    ) -> Worker:
        """A worker for ``queue`` (default: ``default_queue``); ``concurrency`` 0 = unlimited.
        ``scheduler=False`` leaves delayed/periodic promotion to other processes."""
        worker_name = name or f"worker-{uuid.uuid4().hex[:8]}"
        return Worker(self, worker_name, concurrency, queue or self.config.default_queue, scheduler)

    def new_scheduler(self, queues: Iterable[str] = ()) -> Scheduler:
        rt = self._runtime()
        return Scheduler(
            rt.broker,
            rt.broker_clients.main,
            self.keys.sched_channel,
            {self.config.default_queue, *queues},
            rt.config.redis.delayed_tasks_poll_period / 1000,
        )

    @asynccontextmanager
    async def scheduler(self, queues: Iterable[str] = ()) -> AsyncIterator[Scheduler]:
        """Run the delayed/periodic scheduler in the current event loop while the block runs.

        >>> # async with server.scheduler():   # e.g. in a FastAPI lifespan
        >>> #     yield
        """
        async with self.connection(), anyio.create_task_group() as tg:
            sched = self.new_scheduler(queues)
            tg.start_soon(sched.run)
            try:
                yield sched
            finally:
                tg.cancel_scope.cancel()

    def get_broker(self) -> RedisBroker:
        return self._runtime().broker

    def get_backend(self) -> RedisBackend:
        return self._runtime().backend
