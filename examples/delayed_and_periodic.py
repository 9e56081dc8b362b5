"""Delayed tasks (ETA), canceling them, and periodic tasks kept in Redis.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/delayed_and_periodic.py
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio

from vecna_async import Config, Server, Signature, TaskCanceled

server = Server(Config.from_env())
ticks: list[str] = []
two_ticks = anyio.Event()


@server.task(name="remind")
async def remind(text: str) -> str:
    ticks.append(text)
    if ticks.count("tick") == 2:
        two_ticks.set()
    return text


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("clock", concurrency=10)  # runs a scheduler too
        tg.start_soon(worker.launch)

        soon = datetime.now(UTC) + timedelta(seconds=0.5)
        r = await server.send_task(Signature("remind", args=["half a second later"], eta=soon))
        state = await r.get_state()
        print("before its ETA:", state.state if state else None)
        print("then:", await r.get(timeout=5))

        later = Signature("remind", args=["never"], eta=datetime.now(UTC) + timedelta(hours=1))
        r = await server.send_task(later)
        await server.cancel_delayed_task(r.task_id)  # the Signature sent, or just its task id
        try:
            await r.get(timeout=5)
        except TaskCanceled:
            print("canceled: it will never run")

        # Every second (6 fields: seconds first), under a code of our own: sending it again (at
        # the next start) replaces it rather than adding a second schedule. The code cancels it,
        # from any process, even after restarts.
        tick = Signature("remind", args=["tick"], code="remind-tick")
        code = await server.send_periodic_task("* * * * * *", tick)
        with anyio.fail_after(10):
            await two_ticks.wait()
        await server.cancel_periodic_task(code)
        print("periodic task fired", ticks.count("tick"), "times, then was canceled")

        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
