"""Middleware: your code around every send and every run. Here an audit line per run, and a
tenant id that the sending side puts in the headers and every task sees.

VECNA_BROKER=redis://127.0.0.1:6379/0 python examples/middleware.py
"""

from __future__ import annotations

from contextvars import ContextVar

import anyio

from vecna_async import Config, Context, RetryTaskLater, Server, Signature, TaskFailed
from vecna_async.middleware import Middleware, Outcome

current_tenant: ContextVar[str] = ContextVar("current_tenant", default="-")


class Tenant(Middleware):
    """The sender's tenant travels in the headers; a run sees it as ``current_tenant``."""

    async def before_send(self, signature: Signature) -> None:
        signature.headers = {**signature.headers, "tenant": current_tenant.get()}

    async def before_run(self, ctx: Context) -> None:
        current_tenant.set(str(ctx.headers.get("tenant", "-")))  # the run's own context


class Audit(Middleware):
    """One line per run, with how it ended."""

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        print(f"audit: {ctx.name} attempt {ctx.attempt} will retry in {delay}s")

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        what = outcome.value if outcome.status == "success" else outcome.error
        print(f"audit: {ctx.name} attempt {ctx.attempt} -> {outcome.status}: {what!r}")


server = Server(Config.from_env())
server.add_middleware(Tenant())  # first added: its before_* hooks run first, its after_* last
server.add_middleware(Audit())


@server.task(name="invoice")
async def invoice(ctx: Context, amount: int) -> str:
    if ctx.attempt == 1:
        raise RetryTaskLater("the PDF service is busy", delay=0.1)
    return f"invoice of {amount} for tenant {current_tenant.get()}"


@server.task(name="refund")
async def refund(amount: int) -> None:
    raise ValueError(f"cannot refund {amount}")


async def main() -> None:
    async with server, anyio.create_task_group() as tg:
        worker = server.new_worker("middleware-example", concurrency=5)
        tg.start_soon(worker.launch)
        current_tenant.set("acme")  # e.g. set by your web app per request
        print("result:", await (await invoice.send(42)).get(timeout=10))
        try:
            await (await refund.send(7)).get(timeout=10)
        except TaskFailed as exc:
            print("refund failed:", exc.error)
        await anyio.sleep(0.1)  # let the last audit line print
        worker.quit()


if __name__ == "__main__":
    anyio.run(main)
