"""A schedule declared in code (``@server.periodic``), as Celery's beat_schedule or arq's cron_jobs.

Every process of the app declares it; each worker (or embedded scheduler) writes it to Redis when it
starts, under its code, replacing what was there: however many processes declare it and however
often they restart, there is one definition and each tick runs once.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/declared_schedule.py
"""

from __future__ import annotations

import anyio

from vecna_async import Config, Server


def build_app(ticks: list[str], enough: anyio.Event, n: int) -> Server:
    """What each process builds at import: its Server and the declared schedule."""
    server = Server(Config.from_env())

    @server.periodic("* * * * * *", name="send_report")  # every second (6 fields: seconds first)
    async def send_report() -> None:
        ticks.append("report")
        if len(ticks) >= n:
            enough.set()

    return server


async def run_worker_until(server: Server, enough: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        worker = server.new_worker("reports", concurrency=5)  # writes the schedule, then runs it
        tg.start_soon(worker.launch)
        with anyio.fail_after(10):
            await enough.wait()
        worker.quit()


async def main() -> None:
    ticks: list[str] = []
    first_run, second_run = anyio.Event(), anyio.Event()
    async with build_app(ticks, first_run, 2) as first:
        await run_worker_until(first, first_run)
    print("declared schedule fired", len(ticks), "times")

    # A restart: a new process declares the same schedule and starts a worker.
    async with build_app(ticks, second_run, len(ticks) + 2) as second:
        await run_worker_until(second, second_run)
        codes = list(await second.new_scheduler().periodic.definitions())
        print("after a restart:", len(codes), "definition, code", repr(codes[0]))
        await second.cancel_periodic_task("send_report")  # stops it (until a process declares it)
    print("then it was canceled")


if __name__ == "__main__":
    anyio.run(main)
