"""Prometheus metrics of a worker: run counts and times by task, runs in progress, queue depth and
dead letters, served on /metrics.

From the command line it is one option (pip install 'vecna_async[prometheus]'):
    vecna-async worker myapp.tasks:server --metrics-port 9100
Here the same in code, scraped once:
    VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/metrics.py
"""

from __future__ import annotations

import contextlib

import anyio
import httpx

from vecna_async import Config, Server, TaskFailed
from vecna_async.integrations.prometheus import PrometheusMiddleware, serve_metrics

server = Server(Config.from_env())
metrics = PrometheusMiddleware()  # in prometheus_client's default registry
server.add_middleware(metrics)


@server.task(name="resize")
async def resize(width: int) -> int:
    await anyio.sleep(0.01)
    return width // 2


@server.task(name="charge")
async def charge(amount: int) -> None:
    raise ValueError(f"card declined for {amount}")


async def main() -> None:
    metrics.watch(server, [server.config.default_queue])  # its depth and dead letters
    async with (
        server,
        serve_metrics(metrics, host="127.0.0.1", port=0) as endpoint,  # 0: any free port
        anyio.create_task_group() as tg,
    ):
        port = endpoint.sockets[0].getsockname()[1]
        worker = server.new_worker("metrics-example", concurrency=5)
        tg.start_soon(worker.launch)
        for width in (640, 1280, 1920):
            await (await resize.send(width)).get(timeout=10)
        with contextlib.suppress(TaskFailed):
            await (await charge.send(10)).get(timeout=10)
        await anyio.sleep(0.1)  # the last run's after_run hook
        async with httpx.AsyncClient() as client:
            page = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        shown = (
            "vecna_tasks_total", "vecna_task_duration_seconds_count", "vecna_tasks_running",
            "vecna_queue_depth", "vecna_dead_letters",
        )  # fmt: skip
        for line in page.splitlines():
            if line.startswith(shown):
                print(line)
        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
