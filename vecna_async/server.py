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

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast, overload

import anyio

from vecna_async.backend.redis import RedisBackend
from vecna_async.backend.results import AsyncResult, ChainAsyncResult, ChordAsyncResult
from vecna_async.broker.redis import RedisBroker
from vecna_async.config import Config
from vecna_async.context import Context, ResourceHook, WorkerHooks
from vecna_async.exceptions import BrokerUnavailable
from vecna_async.keys import Keys
from vecna_async.messages import TaskMessage
from vecna_async.middleware import Middleware, Middlewares
from vecna_async.runtime import Runtime, open_runtime
from vecna_async.scheduler.declared import DeclaredSchedules
from vecna_async.scheduler.scheduler import Scheduler, running
from vecna_async.server_cancel import CancelMixin
from vecna_async.server_periodic import PeriodicMixin
from vecna_async.tasks.registry import (
    TaskDecorator,
    TaskEntry,
    TaskFunction,
    TaskHandle,
    TaskRegistry,
)
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import prepare, prepare_chain, prepare_chord, publish, walk
from vecna_async.tasks.workflows import Chain, Chord, Group
from vecna_async.worker.worker import Worker

if TYPE_CHECKING:
    from vecna_async.inspection.inspector import Inspector

log = logging.getLogger("vecna_async.scheduler")
P = ParamSpec("P")
R = TypeVar("R")


class Server(PeriodicMixin, CancelMixin):
    """Configuration, registered tasks and the connections to Redis.

    Connections open on first use or with ``async with server`` / ``await server.connect()``;
    ``close()`` (or leaving the ``async with``) closes them.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.id = uuid.uuid4().hex[:16]
        self.keys = Keys(self.config.redis.key_prefix)
        self.registry = TaskRegistry()
        self.worker_hooks = WorkerHooks()
        self.declared = DeclaredSchedules()
        self.middleware = Middlewares()
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
    def register_task(self, name: str, fn: TaskFunction, **options: Any) -> TaskEntry:
        """Register ``fn`` (async, or sync to run in a thread) under ``name``; ``options`` as for
        ``task()``."""
        return self.registry.register(name, fn, options)

    def register_tasks(self, tasks: Mapping[str, TaskFunction]) -> None:
        """Register several tasks at once, by name."""
        for name, fn in tasks.items():
            self.registry.register(name, fn)

    @overload
    def task(
        self, fn: Callable[Concatenate[Context, P], Awaitable[R]], /
    ) -> TaskHandle[P, R]: ...  # pragma: no cover

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> TaskHandle[P, R]: ...  # pragma: no cover

    @overload
    def task(
        self, fn: None = None, /, *, name: str | None = None, **options: Any
    ) -> TaskDecorator: ...  # pragma: no cover

    def task(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        /,
        *,
        name: str | None = None,
        **options: Any,
    ) -> TaskHandle[Any, Any] | TaskDecorator:
        """Register an ``async def`` as a task and return a typed handle.

        ``options`` are Signature fields (``retry_count=3``, ``routing_key="emails"`` ...; see
        ``tasks.options.TASK_OPTIONS``) applied to every send of the task by this Server, by
        handle or by name, wherever the Signature left them at their defaults. An unknown option
        is a TypeError naming it. ``await handle.send(...)`` is checked by mypy.
        """

        def register(f: Callable[..., Awaitable[Any]]) -> TaskHandle[Any, Any]:
            task_name = name or f.__name__
            entry = self.registry.register(task_name, f, options)
            return TaskHandle(self, entry)

        return register(fn) if fn is not None else cast(TaskDecorator, register)

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware``'s hooks around every send of this Server and every run of its
        workers (``vecna_async.middleware``): in the order added, the ``after_*`` hooks in
        reverse. A hook that raises is logged and skipped; the send or run goes on. Add them
        before sending and before starting workers."""
        self.middleware.add(middleware)

    # -- worker resources ----------------------------------------------------------------------
    def on_worker_startup(self, hook: ResourceHook) -> ResourceHook:
        """Register ``async def hook(state)``, run by every worker of this Server before it claims
        anything: open what its tasks share (an HTTP client, a database pool) into ``state``
        (tasks see it as ``ctx.state``). A hook that raises stops the worker with
        ``WorkerStartupFailed``. Hooks run in the order registered."""
        self.worker_hooks.startup.append(hook)
        return hook

    def on_worker_shutdown(self, hook: ResourceHook) -> ResourceHook:
        """Register ``async def hook(state)``, run by every worker when it stops (after its
        tasks finished or were handed back): close what the startup hooks opened. Each runs even
        if another raised (errors are logged)."""
        self.worker_hooks.shutdown.append(hook)
        return hook

    # -- sending -------------------------------------------------------------------------------
    def _prepare(self, sig: Signature) -> TaskMessage:
        """The message for ``sig``, with this Server's task options and argument checks."""
        reply_to = self._runtime().backend.reply_channel
        return prepare(sig, self.config.default_queue, reply_to, self.registry)

    async def _publish(
        self, messages: list[TaskMessage], sent: Sequence[Signature], concurrency: int = 0
    ) -> None:
        """Write ``messages`` (the Signatures ``sent`` are theirs, or nested in them), with the
        middlewares' send hooks around the write if there are any."""
        rt = self._runtime()
        if rt.cluster and any(len({x.queue for x in walk([m])}) > 1 for m in messages):
            raise ValueError(
                "on Redis Cluster, a task and its callbacks (or a workflow's tasks) must share "
                "one queue (one hash slot): set the same routing_key on all of them"
            )
        if not self.middleware:
            await self._write(rt, messages, concurrency)
            return
        write = lambda: self._write(rt, messages, concurrency)  # noqa: E731
        await self.middleware.send(sent, messages, write, self._result)

    async def _write(self, rt: Runtime, messages: list[TaskMessage], concurrency: int) -> None:
        await publish(
            rt.broker,
            messages,
            self.config.redis.max_message_bytes,
            concurrency=concurrency,
            signer=rt.signer,
        )

    def _result(
        self, msg: TaskMessage, sig: Signature | None = None, generation: int = 0
    ) -> AsyncResult[Any]:
        return AsyncResult(self._runtime().results, msg.id, msg.queue, sig, Any, generation)

    async def send_task(self, signature: Signature) -> AsyncResult[Any]:
        """Send one task; returns its AsyncResult. Raises BrokerUnavailable if Redis is down,
        MessageTooLarge for an oversized message (nothing is sent then)."""
        (result,) = await self.send_tasks([signature])
        return result

    async def send_tasks(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many tasks in one round trip per queue (all encoded and checked first)."""
        sigs = list(signatures)
        msgs = [self._prepare(s) for s in sigs]
        generation = self._runtime().listener.generation  # before the send: see ResultListener
        await self._publish(msgs, sigs)
        return [self._result(m, s, generation) for s, m in zip(sigs, msgs, strict=True)]

    async def send_group(self, group: Group, concurrency: int = 0) -> list[AsyncResult[Any]]:
        """Send a group's tasks, ``concurrency`` per round trip (0: all at once)."""
        msgs = [self._prepare(s) for s in group.tasks]
        await self._publish(msgs, group.tasks, concurrency)
        return [self._result(m, s) for s, m in zip(group.tasks, msgs, strict=True)]

    async def send_chain(self, chain: Chain) -> ChainAsyncResult:
        """Send a chain: its first task now, each next one when the previous succeeds."""
        head = prepare_chain(
            chain, self.config.default_queue, self._runtime().backend.reply_channel, self.registry
        )
        await self._publish([head], chain.tasks)
        links = [m for m in walk([head]) if m.id in {s.id for s in chain.tasks}]
        return ChainAsyncResult(
            [self._result(m, s) for s, m in zip(chain.tasks, links, strict=True)]
        )

    async def send_chord(self, chord: Chord, concurrency: int = 0) -> ChordAsyncResult:
        """Send a chord's group; the callback follows once, when the last member succeeds."""
        rt = self._runtime()
        members = prepare_chord(
            chord, self.config.default_queue, rt.backend.reply_channel, self.registry
        )
        await self._publish(members, [*chord.group.tasks, chord.callback], concurrency)
        callback = members[0].chord_callback
        assert callback is not None
        return ChordAsyncResult(
            [self._result(m, s) for s, m in zip(chord.group.tasks, members, strict=True)],
            self._result(callback, chord.callback),
        )

    def result(self, task_id: str, queue: str | None = None) -> AsyncResult[Any]:
        """An AsyncResult for a task id sent elsewhere (queue defaults to ``default_queue``)."""
        return AsyncResult(self._runtime().results, task_id, queue or self.config.default_queue)

    # -- workers and schedulers ----------------------------------------------------------------
    def new_worker(
        self,
        name: str = "",
        concurrency: int = 0,
        *,
        queues: Sequence[str] | None = None,
        queue: str | None = None,
        scheduler: bool = True,
    ) -> Worker:
        """A worker for ``queues`` (default: ``default_queue``), served in strict order: the
        first queue is drained before a slot goes to the next. ``queue=`` names a single one.
        ``concurrency`` 0 = unlimited. ``scheduler=False`` leaves delayed/periodic promotion to
        other processes."""
        if queues is not None and queue is not None:
            raise TypeError("new_worker: give queues=[...] or queue=..., not both")
        names = list(queues) if queues is not None else [queue or self.config.default_queue]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"new_worker: queues must be distinct and not empty, got {names}")
        worker_name = name or f"worker-{uuid.uuid4().hex[:8]}"
        return Worker(self, worker_name, concurrency, names, scheduler)

    def new_scheduler(
        self, queues: Iterable[str] = (), *, write_declared: bool = False
    ) -> Scheduler:
        """A scheduler for ``default_queue`` and ``queues`` (and every queue it learns of);
        ``write_declared``: it writes the declared schedules first (``Scheduler``)."""
        rt = self._runtime()
        return Scheduler(
            rt.broker,
            rt.periodic,
            rt.broker_clients.main,
            self.keys.sched_channel,
            {self.config.default_queue, *queues},
            rt.config.redis.delayed_tasks_poll_period / 1000,
            declare=self.write_declared_schedules if write_declared else None,
        )

    @asynccontextmanager
    async def scheduler(self, queues: Iterable[str] = ()) -> AsyncIterator[Scheduler]:
        """Run the delayed/periodic scheduler in the current event loop while the block runs.

        The startup checks run first (``Runtime.preflight``): UnsupportedRedis for a Redis older
        than 7.0; warnings logged once; skipped, with a warning, if Redis cannot be reached. Then
        the declared schedules (``@server.periodic``) are written, in the scheduler's first
        pass. An error raised in the block comes out as itself (not in an ExceptionGroup).

        >>> # async with server.scheduler():   # e.g. in a FastAPI lifespan
        >>> #     yield
        """
        async with self.connection() as rt:
            try:
                await rt.preflight()  # UnsupportedRedis: the scheduler does not start
            except BrokerUnavailable as exc:  # do not hold up the app: the scheduler retries
                log.warning("scheduler: startup checks skipped: %s", exc)
            async with running(self.new_scheduler(queues, write_declared=True)) as sched:
                yield sched

    def inspect(self, queues: Iterable[str] = ()) -> Inspector:
        """The inspection API (``vecna_async.inspection``): queues, workers, running, delayed
        and periodic tasks, dead letters, one task by id, and the operator's actions. ``queues``
        are shown besides the known ones (default_queue, live workers' queues, queues with
        delayed work). Uses this Server's connections if it is connected, else its own per call.

        >>> # insp = server.inspect();  await insp.queues()  -> [QueueInfo(name=...), ...]
        """
        from vecna_async.inspection.inspector import Inspector  # only when used

        return Inspector(self, queues)

    def get_broker(self) -> RedisBroker:
        return self._runtime().broker

    def get_backend(self) -> RedisBackend:
        return self._runtime().backend
