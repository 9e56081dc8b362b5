"""The worker's lifecycle: start its parts, run until asked to stop, then stop without losing work.

Start (``startup``, ``resources``): wait for Redis (at most ``startup_timeout``) and run the
startup checks, name the connections, write the declared schedules (``@server.periodic``), open
the worker's resources (``@server.on_worker_startup``). Then the parts, each its own module: the
Consumer claims messages for free slots, the Executor runs each, the Flusher settles outcomes in
batches, the Heartbeat renews leases, the CancelListener stops runs of tasks canceled while
running, the Presence keeps the worker in the registry of live workers (``vecna-async check``),
the ParkedWatch warns about messages of tasks this worker does not know, and (unless disabled) a
Scheduler promotes due delayed entries. Stopping (``quit()``, SIGTERM/SIGINT, or cancelling
``launch()``): claim nothing more, let running tasks finish for up to ``Config.shutdown_grace``
seconds, then cancel the rest and hand their messages back to the queue at once, so no message
waits for a lease to expire. A second signal (half a second after the first or later) skips
the grace period.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio

from vecna_async.broker.queues import QUEUE_REMEMBER_SECONDS
from vecna_async.logs import log_fields
from vecna_async.worker.cancels import CancelListener
from vecna_async.worker.consumer import Consumer
from vecna_async.worker.executor import ErrorHandler, Executor
from vecna_async.worker.flusher import Flusher
from vecna_async.worker.heartbeat import Heartbeat, InFlight
from vecna_async.worker.parked import ParkedWatch
from vecna_async.worker.presence import Presence
from vecna_async.worker.progress import progress_reporter
from vecna_async.worker.resources import worker_resources
from vecna_async.worker.startup import (
    name_worker_connections,
    wait_for_redis,
    write_declared_schedules,
)
from vecna_async.worker.taskset import TaskSet

if TYPE_CHECKING:
    from vecna_async.broker.redis import RedisBroker
    from vecna_async.runtime import Runtime
    from vecna_async.server import Server

log = logging.getLogger("vecna_async.worker")
UNLIMITED = 1_000_000_000
DRAIN_SECONDS = 10.0
SIGNAL_DEBOUNCE = 0.5
"""A second signal within this many seconds of the first is the same request, not a second one."""


class Worker:
    """Consumes its queues, in strict order, with at most ``concurrency`` tasks at once
    (0 = unlimited).

    ``startup_timeout``: the longest ``launch()`` waits for an unreachable Redis at start before
    it raises BrokerUnavailable (None: as long as it takes; set it before ``launch()``).

    >>> # worker = server.new_worker("emails", concurrency=10, queues=["high", "default"])
    >>> # worker.startup_timeout = 60
    >>> # await worker.launch()      # until worker.quit(), SIGTERM/SIGINT or cancellation
    """

    def __init__(
        self,
        server: Server,
        name: str,
        concurrency: int,
        queues: list[str],
        run_scheduler: bool,
        *,
        startup_timeout: float | None = None,
    ) -> None:
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0 (0 = unlimited), got {concurrency}")
        self.name = name
        self.concurrency = concurrency
        self.queues = queues
        self.run_scheduler = run_scheduler
        self.startup_timeout = startup_timeout
        self.state: dict[str, Any] = {}
        """This worker's resources, opened by ``on_worker_startup`` hooks (``ctx.state``)."""
        self._server = server
        self._error_handler: ErrorHandler | None = None
        self._consumer: Consumer | None = None
        self._quit_requested = False
        self._tasks: TaskSet | None = None
        self._signals = 0

    @property
    def queue(self) -> str:
        """The first (or only) queue this worker consumes."""
        return self.queues[0]

    def set_error_handler(self, handler: ErrorHandler) -> None:
        """Call ``handler(signature, exc)`` when a task fails for good (sync or async)."""
        self._error_handler = handler

    def quit(self) -> None:
        """Ask the worker to stop (returns at once; ``launch()`` returns when it has drained)."""
        self._quit_requested = True
        if self._consumer is not None:
            self._consumer.stop()

    async def launch(self) -> None:
        """Run until ``quit()``, a signal, or cancellation; then drain gracefully. At start, a
        wrong password, a refused ACL, a Redis older than 7.0, an unreachable Redis past
        ``startup_timeout`` or a failing ``on_worker_startup`` hook raise (a VecnaError) before
        anything is claimed."""
        with log_fields(worker=self.name, queue=",".join(self.queues)):
            await self._launch()

    async def _launch(self) -> None:
        server = self._server
        stopping = lambda: self._quit_requested  # noqa: E731
        async with server.connection() as rt:
            await wait_for_redis(rt, self.name, self.startup_timeout, stopping)
            await name_worker_connections(rt, self.name)
            await write_declared_schedules(server, self.name, stopping)
            registry = server.registry
            if not len(registry):
                log.warning("worker %s has no registered tasks: it will claim nothing", self.name)
            in_flight = InFlight()
            slots = anyio.Semaphore(self.concurrency or UNLIMITED)

            def settled(tokens: list[str]) -> None:
                for _ in range(in_flight.forget(tokens)):  # a slot is free once its lease is gone
                    slots.release()

            flusher = Flusher(rt.broker, rt.backend if rt.separate_backend else None, settled)
            executor = Executor(
                registry,
                flusher,
                rt.keys,
                rt.config.redis.max_message_bytes,
                max_result_bytes=rt.config.redis.max_result_bytes,
                signer=rt.signer,
                middleware=server.middleware,
            )
            executor.error_handler = lambda sig, exc: (
                self._error_handler(sig, exc) if self._error_handler else None
            )
            # on the blocking pool (long waits live there), so a small main pool is not starved
            cancels = CancelListener(rt.broker_clients.blocking, rt.keys.cancel_channel, in_flight)
            executor.canceled = cancels.canceled
            executor.worker_name = self.name
            executor.state = self.state
            executor.progress = progress_reporter(rt.backend)
            r = rt.config.redis
            consumer = Consumer(
                rt.broker,
                self.queues,
                registry.names,
                slots,
                in_flight,
                executor.run,
                executor.dead_lettered,
                claim_batch=min(r.claim_batch, self.concurrency or r.claim_batch),
                poll_seconds=r.normal_tasks_poll_period / 1000,
                lease_seconds=r.lease_timeout,
                worker_name=self.name,
            )
            presence = Presence(
                # not the main pool: redis-py serialises its pool's releases, and a beat failing
                # against a hung Redis would hold up every other caller of that pool
                rt.broker_clients.blocking,
                rt.keys,
                rt.broker.where,
                name=self.name,
                queues=self.queues,
                concurrency=self.concurrency,
                interval=r.heartbeat_interval,
                stats=lambda: (len(in_flight), executor.succeeded, executor.failed),
            )
            self._consumer = consumer
            if self._quit_requested:
                consumer.stop()
            log.info(
                "worker %s: queues %s, concurrency %s, tasks: %s",
                self.name,
                ", ".join(self.queues),
                self.concurrency or "unlimited",
                ", ".join(registry.names),
            )
            async with worker_resources(server.worker_hooks, self.state, self.name):
                await self._serve(rt, flusher, in_flight, consumer, cancels, presence)
            log.info("worker %s stopped", self.name)

    async def _serve(
        self,
        rt: Runtime,
        flusher: Flusher,
        in_flight: InFlight,
        consumer: Consumer,
        cancels: CancelListener,
        presence: Presence,
    ) -> None:
        r = rt.config.redis
        async with anyio.create_task_group() as services:
            services.start_soon(flusher.run)
            services.start_soon(Heartbeat(rt.broker, in_flight, r.heartbeat_interval).run)
            services.start_soon(self._keep_queue_known, rt.broker)
            services.start_soon(cancels.run)
            services.start_soon(presence.run)
            for queue in self.queues:
                parked = ParkedWatch(
                    rt.broker.listing, queue, self._server.registry.names, self.name,
                    r.heartbeat_interval,
                )  # fmt: skip
                services.start_soon(parked.run)
            if self.run_scheduler:
                services.start_soon(self._server.new_scheduler(self.queues).run)
            if threading.current_thread() is threading.main_thread():
                services.start_soon(self._watch_signals)
            try:
                await self._consume(consumer, in_flight, rt.config.shutdown_grace)
            finally:
                with anyio.CancelScope(shield=True):
                    if not await flusher.drain(DRAIN_SECONDS):
                        log.error("worker %s stopped with outcomes it could not settle", self.name)
                services.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await presence.leave()

    async def _consume(self, consumer: Consumer, in_flight: InFlight, grace: float) -> None:
        tasks = TaskSet()
        self._tasks = tasks
        try:
            await consumer.run(tasks)
            running = len(tasks)
            if running:
                log.info("worker %s: waiting up to %.0fs for %d task(s)", self.name, grace, running)
            with anyio.move_on_after(grace):
                await tasks.wait()
            if len(tasks):
                log.warning(
                    "worker %s: %d task(s) still running after the %.0fs grace; cancelling them "
                    "and handing their messages back to the queue",
                    self.name,
                    len(tasks),
                    grace,
                )
        finally:
            tasks.cancel_all()  # what still runs hands its message back (Executor.run)
            with anyio.CancelScope(shield=True):
                await tasks.wait()

    async def _keep_queue_known(self, broker: RedisBroker) -> None:
        """Keep this worker's queues in the known-queues set, so every scheduler promotes their
        retries and ETA tasks (refreshed hourly; retried while Redis is unreachable)."""
        while True:
            try:
                for queue in self.queues:
                    await broker.queues.remember(queue)
            except Exception as exc:
                log.debug("cannot record the queues %s yet (%s)", self.queues, exc)
                await anyio.sleep(5.0)
                continue
            await anyio.sleep(QUEUE_REMEMBER_SECONDS)

    async def _watch_signals(self) -> None:
        first_at = 0.0
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                now = time.monotonic()
                if self._signals and now - first_at < SIGNAL_DEBOUNCE:
                    continue  # the same stop sent twice (terminal + supervisor, systemd's cgroup)
                self._signals += 1
                if self._signals == 1:
                    first_at = now
                    log.info(
                        "worker %s: %s, stopping gracefully", self.name, signal.Signals(signum).name
                    )
                    self.quit()
                else:
                    log.warning("worker %s: second signal, handing running tasks back", self.name)
                    if self._tasks is not None:
                        self._tasks.cancel_all()
