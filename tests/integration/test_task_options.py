"""Options given at registration (``@server.task(retry_count=3)``) apply to every send of the task
by that Server: by handle, by name (``Signature("flaky")``, as a generic ``POST /jobs`` does), and
inside workflows and periodic definitions, unless the Signature sets them."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.vecna import running_worker
from vecna_async import Chord, Group, Server, Signature

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"


def register(server: Server, calls: Counter[str]) -> None:
    @server.task(name="flaky", retry_count=3)
    async def flaky(n: int) -> int:
        calls[f"flaky:{n}"] += 1
        if calls[f"flaky:{n}"] == 1:
            raise ConnectionError("the first call always fails")
        return n

    @server.task(name="mail", routing_key="emails", priority=5, headers={"team": "growth"})
    async def mail(address: str) -> str:
        return f"sent to {address}"

    @server.task(name="total")
    async def total(*numbers: int) -> int:
        return sum(numbers)


async def test_options_apply_to_a_task_sent_by_name(server: Server) -> None:
    calls: Counter[str] = Counter()
    register(server, calls)
    async with running_worker(server, 5):
        r = await server.send_task(Signature("flaky", args=[7]))
        assert await r.get(timeout=10) == 7  # retried: before, it failed for good at once
    assert calls["flaky:7"] == 2


async def test_the_signature_wins_over_an_option(server: Server) -> None:
    calls: Counter[str] = Counter()
    register(server, calls)
    sig = Signature("flaky", args=[8], retry_count=1, priority=9)
    await server.send_task(sig)
    (pending,) = await server.get_broker().get_pending_tasks(QUEUE)
    assert (pending.retry_count, pending.priority) == (1, 9)


async def test_routing_and_other_options_apply_by_name(server: Server) -> None:
    register(server, Counter())
    sig = Signature("mail", args=["a@example.com"])
    r = await server.send_task(sig)
    assert r.queue == "emails"
    assert sig.routing_key == "emails"  # the Signature shows what was sent (as its id does)
    broker = server.get_broker()
    assert await broker.get_pending_tasks(QUEUE) == []
    (pending,) = await broker.get_pending_tasks("emails")
    assert (pending.priority, pending.headers) == (5, {"team": "growth"})
    async with running_worker(server, 5, queue="emails"):
        assert await r.get(timeout=5) == "sent to a@example.com"


async def test_options_apply_inside_workflows_and_periodic_definitions(server: Server) -> None:
    register(server, Counter())
    chord = Chord(
        Group(Signature("flaky", args=[1]), Signature("flaky", args=[2])), Signature("mail")
    )
    await server.send_chord(chord)
    members = await server.get_broker().get_pending_tasks(QUEUE)
    assert [m.retry_count for m in members] == [3, 3]
    callback = members[0].chord_callback
    assert callback is not None
    assert (callback.routing_key, callback.priority) == ("emails", 5)

    code = await server.send_periodic_task("0 6 * * *", Signature("flaky", args=[3]))
    definition = (await server.new_scheduler().periodic.definitions())[code]
    assert definition.tasks[0].retry_count == 3
