"""Prometheus metrics (``pip install 'vecna_async[prometheus]'``): a middleware that counts and
times every run, gauges of the queues read from Redis at scrape time, and a small ``/metrics``
endpoint.

The command line does it all: ``vecna-async worker myapp.tasks:server --metrics-port 9100``
serves ``http://<host>:9100/metrics`` (with ``--processes N``: child ``i`` on port ``9100 + i``).
In your own code::

    from vecna_async.integrations.prometheus import PrometheusMiddleware, serve_metrics

    metrics = PrometheusMiddleware()          # registers in prometheus_client's default registry
    server.add_middleware(metrics)
    metrics.watch(server, ["vecna_tasks"])    # the queue gauges (read from Redis at each scrape)
    async with server, serve_metrics(metrics, port=9100):
        await server.new_worker("w1", 10).launch()

    body, content_type = await metrics.render()   # or serve it from a route of your web app

The metrics (names fixed by the API contract):

- ``vecna_tasks_total{task,queue,state}`` counter: runs that ended in ``state`` -- SUCCESS,
  FAILURE (a timeout too), RETRY or CANCELED; a run interrupted by a stopping worker or a lost
  lease is not counted (it runs again).
- ``vecna_task_duration_seconds{task,queue}`` histogram: the run time of the same runs.
- ``vecna_tasks_running{queue}`` gauge: runs in progress in this process.
- ``vecna_queue_depth{queue}`` and ``vecna_dead_letters{queue}`` gauges: messages waiting to run
  (ready: not the delayed or the held back) and dead letters, of the watched queues, read from
  Redis when scraped (every process that watches a queue reports the same value: aggregate
  them with ``max by (queue)``, not ``sum``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "vecna_async's Prometheus metrics need prometheus-client: "
        "pip install 'vecna_async[prometheus]'"
    ) from exc

from vecna_async.context import Context
from vecna_async.exceptions import ConfigError
from vecna_async.middleware import Middleware, Outcome

if TYPE_CHECKING:
    from vecna_async.server import Server
    from vecna_async.worker.worker import Worker

log = logging.getLogger("vecna_async.middleware")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds; prometheus_client's defaults stop at 10 s, tasks often run longer."""
READ_TIMEOUT = 2.0
"""The longest a scrape waits for the queue gauges (then it answers without them)."""


class QueueGauges(Collector):
    """``vecna_queue_depth`` and ``vecna_dead_letters`` of some queues: a collector whose values
    ``refresh()`` reads from Redis (a scrape cannot await, so the endpoint refreshes first)."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.queues: list[str] = []
        self._values: dict[str, tuple[int, int]] = {}

    async def refresh(self) -> None:
        """Read the watched queues' counts; on trouble, log it and report no queue gauges
        rather than stale ones."""
        if self.server is None:
            return
        listing = self.server.get_broker().listing
        values: dict[str, tuple[int, int]] = {}
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                for queue in self.queues:
                    values[queue] = await listing.ready_and_dead(queue)
        except Exception as exc:
            log.warning("metrics: cannot read the queue gauges (%s)", exc)
            values = {}
        self._values = values

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "vecna_queue_depth", "Messages waiting to run in the queue (ready)", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "vecna_dead_letters", "Dead letters kept for the queue", labels=["queue"]
        )
        for queue, (ready, dead_letters) in sorted(self._values.items()):
            depth.add_metric([queue], ready)
            dead.add_metric([queue], dead_letters)
        return [depth, dead]

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("vecna_queue_depth", "", labels=["queue"]),
            GaugeMetricFamily("vecna_dead_letters", "", labels=["queue"]),
        ]


class PrometheusMiddleware(Middleware):
    """Counts and times every run of this process's workers; with ``watch()``, also reports the
    depth and dead letters of queues. ``registry``: where the metrics are registered (default:
    prometheus_client's ``REGISTRY``, which also has the process and Python metrics); one
    middleware per registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.tasks = Counter(
            "vecna_tasks_total",
            "Task runs that ended, by the state they left the task in",
            ["task", "queue", "state"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "vecna_task_duration_seconds",
            "Run time of the task runs that ended",
            ["task", "queue"],
            buckets=tuple(buckets),
            registry=self.registry,
        )
        self.running = Gauge(
            "vecna_tasks_running",
            "Task runs in progress in this process",
            ["queue"],
            registry=self.registry,
        )
        self.queue_gauges = QueueGauges()
        self.registry.register(self.queue_gauges)

    def watch(self, server: Server, queues: Iterable[str]) -> None:
        """Report ``vecna_queue_depth`` and ``vecna_dead_letters`` of ``queues`` (adding to
        those already watched), read through ``server``'s connection when scraped; it must be
        connected then (``async with server``)."""
        self.queue_gauges.server = server
        for queue in queues:
            if queue not in self.queue_gauges.queues:
                self.queue_gauges.queues.append(queue)
                self.running.labels(queue)  # 0 from the start, not absent until a first run

    async def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, the queue gauges read now, and the content
        type to serve them with."""
        await self.queue_gauges.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def before_run(self, ctx: Context) -> None:
        self.running.labels(ctx.queue).inc()

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        self.running.labels(ctx.queue).dec()
        state = outcome.state
        if state is not None:
            self.tasks.labels(ctx.name, ctx.queue, state.value).inc()
            self.duration.labels(ctx.name, ctx.queue).observe(outcome.duration)


def installed(server: Server) -> PrometheusMiddleware:
    """The server's PrometheusMiddleware, added (with the default registry) if it has none."""
    for mw in server.middleware:
        if isinstance(mw, PrometheusMiddleware):
            return mw
    metrics = PrometheusMiddleware()
    server.add_middleware(metrics)
    return metrics


@asynccontextmanager
async def serve_metrics(
    metrics: PrometheusMiddleware, host: str = "0.0.0.0", port: int = 9100
) -> AsyncIterator[asyncio.Server]:
    """Serve ``GET /metrics`` on ``host:port`` in this event loop while the block runs (an
    OSError at once if the port is taken)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0].partition(b"?")[0]
                if method not in (b"GET", b"HEAD"):
                    status, body, ctype = "405 Method Not Allowed", b"", "text/plain"
                elif path not in (b"/metrics", b"/"):
                    status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
                else:
                    status, (body, ctype) = "200 OK", await metrics.render()
                headers = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(headers.encode() + (body if method == b"GET" else b""))
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or never finished its request
        finally:
            writer.close()

    try:
        listener = await asyncio.start_server(handle, host, port)
    except OSError as exc:
        raise ConfigError(f"metrics port {port}: cannot listen on {host}:{port}: {exc}") from None
    log.info("metrics: serving http://%s:%d/metrics", host, port)
    try:
        yield listener
    finally:
        listener.close()
        await listener.wait_closed()


async def run_worker_with_metrics(
    server: Server, worker: Worker, port: int, host: str = "0.0.0.0"
) -> None:
    """``vecna-async worker ... --metrics-port``: ``worker.launch()`` with its metrics served on
    ``host:port`` (the server's PrometheusMiddleware, or a new one, watching its queues)."""
    metrics = installed(server)
    metrics.watch(server, worker.queues)
    async with server, serve_metrics(metrics, host, port):
        await worker.launch()
