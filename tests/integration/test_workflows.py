"""Groups, chords and chains against a real Redis and real workers.

The tasks are defined here (not shared with other test modules) and leave markers in Redis under
``<key prefix>:wf:`` through a plain client, so a test can count what ran, in which order and on
which worker. Synchronisation is by awaiting results or polling Redis with deadlines; the only
sleeps are inside tasks, to simulate work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.vecna import eventually, running_worker, tuned
from vecna_async import (
    Arg,
    Chain,
    Chord,
    Config,
    Group,
    Server,
    Signature,
    State,
    TaskFailed,
)
from vecna_async.backend.results import AsyncResult
from vecna_async.broker.base import Claimed, Done, SettleBatch
from vecna_async.messages import decode_task
from vecna_async.worker.executor import Executor
from vecna_async.worker.flusher import Flusher

pytestmark = [pytest.mark.anyio, pytest.mark.both_backends]

QUEUE = "vecna_tasks"  # Config's default_queue


# -- tasks ---------------------------------------------------------------------------------------


class Marks:
    """Marker keys in Redis (one namespace per test, under the test's key prefix)."""

    def __init__(self, rc_text: aioredis.Redis, prefix: str) -> None:
        self.rc_text = rc_text
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:wf:{name}"

    async def runs(self, name: str) -> int:
        """How often the task (or tagged callback) ``name`` ran."""
        return int(await self.rc_text.hget(self.key("runs"), name) or 0)

    async def list(self, name: str) -> list[Any]:
        return [json.loads(x) for x in await self.rc_text.lrange(self.key(name), 0, -1)]


def register(server: Server, marks: Marks, worker_label: str = "w0") -> None:
    """Register this module's tasks on ``server``; ``worker_label`` names the server's worker."""
    rc_text = marks.rc_text
    key = marks.key

    async def count(name: str) -> None:
        await rc_text.hincrby(key("runs"), name, 1)

    async def add(*numbers: int) -> int:
        await count("add")
        return sum(numbers)

    async def multiply(*numbers: int) -> int:
        await count("multiply")
        product = 1
        for n in numbers:
            product *= n
        return product

    async def collect(*values: Any) -> list[Any]:
        """A chord callback: returns exactly the args it was called with."""
        await count("collect")
        await rc_text.rpush(key("collect"), json.dumps(list(values)))
        return list(values)

    async def tagged_sum(tag: str, *values: int) -> int:
        """A callback that counts its runs per tag (one tag per chord)."""
        await count(tag)
        return sum(values)

    async def slow_value(value: int, delay: float) -> int:
        await anyio.sleep(delay)
        await rc_text.rpush(key("finished"), json.dumps(value))
        return value

    async def pair(a: int, b: int) -> tuple[int, int]:
        return a, b

    async def as_list(a: int, b: int) -> list[int]:
        return [a, b]

    async def fail(message: str, *rest: Any) -> None:
        await count("fail")
        raise RuntimeError(message)

    async def on_error(*args: Any) -> None:
        await count("on_error")
        await rc_text.rpush(key("errors"), json.dumps(list(args)))

    async def mark(name: str, *rest: Any) -> str:
        await count(name)
        return name

    async def flaky(name: str, value: int) -> int:
        """Fails on its first attempt, succeeds on the next."""
        attempt = await rc_text.hincrby(key("attempts"), name, 1)
        if attempt == 1:
            raise RuntimeError(f"{name}: first attempt fails")
        return value

    async def barrier_member(tag: str, index: int, count_: int) -> int:
        """Wait until all ``count_`` members of chord ``tag`` run, so they finish together."""
        await rc_text.sadd(key(f"workers:{tag}"), worker_label)
        await rc_text.incr(key(f"barrier:{tag}"))
        deadline = time.monotonic() + 15
        while int(await rc_text.get(key(f"barrier:{tag}")) or 0) < count_:
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier {tag}: not all {count_} members started")
            await anyio.sleep(0.002)
        return index

    server.register_tasks(
        {
            "add": add,
            "multiply": multiply,
            "collect": collect,
            "tagged_sum": tagged_sum,
            "slow_value": slow_value,
            "pair": pair,
            "as_list": as_list,
            "fail": fail,
            "on_error": on_error,
            "mark": mark,
            "flaky": flaky,
            "barrier_member": barrier_member,
        }
    )


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def marks(rc_text: aioredis.Redis, config: Config) -> Marks:
    return Marks(rc_text, config.redis.key_prefix)


@pytest.fixture
def app(server: Server, marks: Marks) -> Server:
    """The ``server`` fixture with this module's tasks registered."""
    register(server, marks)
    return server


async def queue_counts(
    rc_text: aioredis.Redis, server: Server, queue: str = QUEUE
) -> dict[str, int]:
    q = server.keys.queue(queue)
    return {
        "ready": int(await rc_text.zcard(q.ready)),
        "delayed": int(await rc_text.zcard(q.delayed)),
        "leases": int(await rc_text.zcard(q.leases)),
        "parked": int(await rc_text.scard(q.parked)),
    }


async def wait_idle(rc_text: aioredis.Redis, server: Server, timeout: float = 10.0) -> None:
    """Until nothing is ready, delayed, leased or parked: whatever was enqueued has run and been
    settled (follow-ups are enqueued in the same script call that acks their parent)."""

    async def idle() -> bool:
        return not any((await queue_counts(rc_text, server)).values())

    await eventually(idle, timeout=timeout)


async def state_of(result: AsyncResult[Any]) -> State:
    state = await result.get_state()
    assert state is not None, f"no state stored for {result.task_id}"
    return state.state


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def add_sig(*numbers: int) -> Signature:
    return Signature("add", args=[Arg("int64", n) for n in numbers])


# -- groups --------------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [0, 2])
async def test_group_results_in_order_sharing_the_group_code(
    app: Server, rc_text: aioredis.Redis, concurrency: int
) -> None:
    sigs = [add_sig(i, i) for i in range(5)]
    group = Group(*sigs)
    results = await app.send_group(group, concurrency=concurrency)

    # 5 messages in round trips of `concurrency` (0: one): one enqueue request record each
    requests = [
        k async for k in rc_text.scan_iter(match=app.keys.queue(QUEUE).request_prefix + "*")
    ]
    assert len(requests) == (3 if concurrency == 2 else 1)
    assert [r.task_id for r in results] == [s.id for s in sigs]
    assert len({s.id for s in sigs}) == 5
    assert all(s.code == group.group_id for s in sigs)
    assert all(s.group_id == group.group_id for s in sigs)

    async with running_worker(app, 10):
        values = [await r.get(timeout=10) for r in results]
    assert values == [0, 2, 4, 6, 8]
    assert [await state_of(r) for r in results] == [State.SUCCESS] * 5


# -- chords --------------------------------------------------------------------------------------


async def test_chord_seed_example_gives_20(app: Server, marks: Marks) -> None:
    chord = Chord(Group(add_sig(1, 1), add_sig(5, 5)), Signature("multiply"))
    async with running_worker(app, 10):
        cr = await app.send_chord(chord, concurrency=0)
        assert await cr.get(timeout=10) == 20
        assert [await r.get(timeout=1) for r in cr.group_results] == [2, 10]
    assert cr.callback.task_id == chord.callback.id
    assert await marks.runs("multiply") == 1


async def test_chord_callback_gets_results_in_group_order_not_finish_order(
    app: Server, marks: Marks
) -> None:
    delays = [0.6, 0.3, 0.0]  # member 0 is the slowest: members finish in reverse order
    members = [Signature("slow_value", args=[i, d]) for i, d in enumerate(delays)]
    chord = Chord(Group(*members), Signature("collect"))
    async with running_worker(app, 10):
        cr = await app.send_chord(chord)
        assert await cr.get(timeout=10) == [0, 1, 2]
    assert await marks.list("finished") == [2, 1, 0]


async def test_chord_member_tuples_are_appended_element_by_element(
    app: Server, marks: Marks
) -> None:
    members = [
        Signature("pair", args=[1, 2]),
        Signature("as_list", args=[3, 4]),  # a list is one result, kept whole
        Signature("pair", args=[5, 6]),
    ]
    chord = Chord(Group(*members), Signature("collect"))
    async with running_worker(app, 10):
        cr = await app.send_chord(chord)
        assert await cr.get(timeout=10) == [1, 2, [3, 4], 5, 6]
        assert await cr.group_results[0].get(timeout=1) == (1, 2)


async def test_chord_callback_own_typed_args_come_first(app: Server, marks: Marks) -> None:
    callback = Signature("collect", args=[Arg("string", "total"), Arg("int64", 7), "plain"])
    chord = Chord(Group(add_sig(1, 1), add_sig(5, 5), add_sig(2, 3)), callback)
    async with running_worker(app, 10):
        cr = await app.send_chord(chord)
        assert await cr.get(timeout=10) == ["total", 7, "plain", 2, 10, 5]

    # the callback's typed args are still checked after the members' results were spliced in
    bad = Chord(Group(add_sig(1, 1)), Signature("collect", args=[Arg("int8", 1000)]))
    async with running_worker(app, 10):
        cr = await app.send_chord(bad)
        with pytest.raises(TaskFailed, match="int8"):
            await cr.get(timeout=10)


async def test_chord_member_failing_for_good_never_runs_the_callback(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    failing = Signature("fail", args=["member broke"])
    chord = Chord(
        Group(add_sig(1, 1), failing, add_sig(5, 5)), Signature("tagged_sum", args=["cb-fail"])
    )
    async with running_worker(app, 10):
        cr = await app.send_chord(chord)
        started = time.monotonic()
        with pytest.raises(TaskFailed) as excinfo:
            await cr.get(timeout=10)
        assert time.monotonic() - started < 3.0, "the failure must be reported, not time out"
        message = str(excinfo.value)
        assert f"'fail' ({failing.id})" in message
        assert "member broke" in message
        ok = [cr.group_results[0], cr.group_results[2]]
        assert [await r.get(timeout=5) for r in ok] == [2, 10]
        await wait_idle(rc_text, app)
    assert await marks.runs("cb-fail") == 0
    assert await state_of(cr.callback) is State.FAILURE


async def test_chord_member_retried_once_still_fires_the_callback_once(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    members = [
        add_sig(1, 1),
        Signature("flaky", args=["m1", 10], retry_count=2),
        add_sig(3, 4),
    ]
    chord = Chord(Group(*members), Signature("tagged_sum", args=["cb-retry"]))
    async with running_worker(app, 10):
        cr = await app.send_chord(chord)
        assert await cr.get(timeout=15) == 2 + 10 + 7
        await wait_idle(rc_text, app)
    assert int(await rc_text.hget(marks.key("attempts"), "m1") or 0) == 2
    assert await marks.runs("cb-retry") == 1


async def test_chord_callback_runs_exactly_once_when_members_finish_together(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """20 members on 4 workers (4 Servers, concurrency 10) held at a Redis barrier so they finish
    at the same instant; the callback must run exactly once. 20 rounds."""
    rounds, size = 20, 20
    async with AsyncExitStack() as stack:
        servers: list[Server] = []
        for w in range(4):
            srv = await stack.enter_async_context(Server(config))
            register(srv, marks, worker_label=f"w{w}")
            servers.append(srv)
        for srv in servers:
            await stack.enter_async_context(running_worker(srv, 10))
        sender = servers[0]
        for r in range(rounds):
            tag = f"round{r}"
            group = Group(*[Signature("barrier_member", args=[tag, i, size]) for i in range(size)])
            cr = await sender.send_chord(Chord(group, Signature("tagged_sum", args=[tag])))
            assert await cr.get(timeout=20) == sum(range(size)), tag
            # the barrier needs all 20 running at once: more than one worker ran them
            assert await rc_text.scard(marks.key(f"workers:{tag}")) >= 2
        await wait_idle(rc_text, sender)
    runs = {as_text(k): int(v) for k, v in (await rc_text.hgetall(marks.key("runs"))).items()}
    assert {k: n for k, n in runs.items() if k.startswith("round")} == {
        f"round{r}": 1 for r in range(rounds)
    }


class _Capture(Flusher):
    """A Flusher that keeps the outcomes the Executor hands it, to settle them by hand."""

    def __init__(self, server: Server) -> None:
        super().__init__(server.get_broker(), None, lambda ids: None)
        self.outcomes: list[Done] = []

    def done(self, c: Claimed, done: Done, reply_to: str) -> None:
        self.outcomes.append(done)


async def _run_member(server: Server, c: Claimed) -> Done:
    """Run a claimed message with the real Executor; return its (unsettled) outcome."""
    capture = _Capture(server)
    max_bytes = server.config.redis.max_message_bytes
    executor = Executor(server.registry, capture, server.keys, max_bytes)
    await executor.run(c)
    (done,) = capture.outcomes
    return done


async def _settle(server: Server, *done: Done) -> list[str]:
    return await server.get_broker().settle(SettleBatch(QUEUE, done=list(done)))


async def test_chord_callback_once_when_a_worker_dies_between_member_and_callback(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """Drive the broker by hand: the last member is claimed by W1, which "dies" before settling;
    its lease expires, W2 gets it (new token) and settles it; the same outcome is flushed twice;
    the callback runs; then the zombie W1 settles late. The callback is enqueued and run once."""
    cfg = tuned(config, lease_timeout=0.6, heartbeat_interval=0.2)
    async with Server(cfg) as srv:
        register(srv, marks)
        broker = srv.get_broker()
        chord = Chord(Group(add_sig(1, 1), add_sig(5, 5)), Signature("tagged_sum", args=["cb"]))
        cr = await srv.send_chord(chord)
        cb_id = cr.callback.task_id
        q = srv.keys.queue(QUEUE)

        async def callback_enqueued() -> bool:
            return bool(await rc_text.exists(q.record(cb_id)))

        claimed = await broker.claim(QUEUE, 2, srv.registry.names)
        assert [c.id for c in claimed] == [s.id for s in chord.group.tasks]
        first, last_w1 = claimed
        assert await _settle(srv, await _run_member(srv, first)) == []
        assert not await callback_enqueued(), "one member left: no callback yet"

        done_w1 = await _run_member(srv, last_w1)  # W1 ran it ... and died before settling

        async def reclaimed() -> list[Claimed]:
            return await broker.claim(QUEUE, 1, srv.registry.names)

        (last_w2,) = await eventually(reclaimed, timeout=10)  # lease expired: redelivered
        assert (last_w2.id, last_w2.deliveries) == (last_w1.id, 2)
        assert last_w2.token != last_w1.token
        done_w2 = await _run_member(srv, last_w2)
        assert await _settle(srv, done_w2) == []
        assert await callback_enqueued()
        assert await rc_text.zscore(q.ready, cb_id) is not None
        assert await state_of(cr.callback) is State.PENDING
        body = await rc_text.hget(q.record(cb_id), "b")
        assert body is not None
        assert decode_task(as_text(body).encode()).args == ["cb", 2, 10]

        # the same outcome flushed again in another call (same token): lost, changes nothing
        assert await _settle(srv, done_w2) == [last_w2.token]
        assert await rc_text.zcard(q.ready) == 1

        async with running_worker(srv, 5):
            assert await cr.get(timeout=10) == 12
            await wait_idle(rc_text, srv)

        # the zombie W1 finally settles with its stale token: lost, no second callback
        assert await _settle(srv, done_w1) == [last_w1.token]
        assert not await callback_enqueued()
        assert await queue_counts(rc_text, srv) == {
            "ready": 0,
            "delayed": 0,
            "leases": 0,
            "parked": 0,
        }
        assert await state_of(cr.callback) is State.SUCCESS
    assert await marks.runs("cb") == 1


async def _dead_letter_by_lease_expiry(srv: Server, task_id: str, delivered: int = 0) -> None:
    """Claim ``task_id`` (already claimed ``delivered`` times) and never settle it, until its
    leases have expired ``max_deliveries`` times and it is dead-lettered (what a crash-looping
    task does to its workers)."""
    broker = srv.get_broker()

    async def reclaimed() -> list[Claimed]:
        return await broker.claim(QUEUE, 1, srv.registry.names)

    for delivery in range(delivered + 1, srv.config.redis.max_deliveries + 1):
        (c,) = await eventually(reclaimed, timeout=10)
        assert (c.id, c.deliveries) == (task_id, delivery)

    async def dead() -> list[str]:
        await broker.claim(QUEUE, 1, srv.registry.names)  # claims reap expired leases
        return [d.task_id for d in await broker.get_dead_letters(QUEUE)]

    assert await eventually(dead, timeout=10) == [task_id]


async def test_chord_member_dead_lettered_fails_the_chord(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """A member whose every delivery dies (leases expire, max_deliveries reached) is
    dead-lettered with state FAILURE: it failed for good, so ChordAsyncResult.get must raise
    TaskFailed naming it (README: "If a member fails for good ... cr.get() raises TaskFailed
    naming the member"), not wait for a callback that can never come."""
    cfg = tuned(config, lease_timeout=0.4, heartbeat_interval=0.1, max_deliveries=2)
    async with Server(cfg) as srv:
        register(srv, marks)
        chord = Chord(Group(add_sig(1, 1), add_sig(5, 5)), Signature("tagged_sum", args=["cb"]))
        cr = await srv.send_chord(chord)
        first, doomed = await srv.get_broker().claim(QUEUE, 2, srv.registry.names)
        assert await _settle(srv, await _run_member(srv, first)) == []
        await _dead_letter_by_lease_expiry(srv, doomed.id, delivered=1)
        member = await cr.group_results[1].get_state()
        assert member is not None
        assert member.state is State.FAILURE
        # The claim that dead-lettered it offered its aftermath to a "worker" (this test) that
        # never settled it, like a worker dying right then: the next real worker settles it.
        async with running_worker(srv, 10):
            with pytest.raises(TaskFailed) as excinfo:
                await cr.get(timeout=3)
        assert doomed.id in str(excinfo.value)
    assert await marks.runs("cb") == 0


async def test_chain_link_dead_lettered_stops_the_chain_with_a_failure(
    config: Config, rc_text: aioredis.Redis, marks: Marks
) -> None:
    """The same for a chain: a dead-lettered link failed for good; ChainAsyncResult.get must
    raise TaskFailed naming it (README: "The chain stops at the first task that fails for good
    ... ch.get() raises TaskFailed naming it"), and the later links must never run."""
    cfg = tuned(config, lease_timeout=0.4, heartbeat_interval=0.1, max_deliveries=2)
    async with Server(cfg) as srv:
        register(srv, marks)
        chain = Chain(add_sig(1, 1), Signature("mark", args=["after"]))
        ch = await srv.send_chain(chain)
        head = chain.tasks[0].id
        assert head is not None
        await _dead_letter_by_lease_expiry(srv, head)
        async with running_worker(srv, 10):  # settles the aftermath no one settled yet
            with pytest.raises(TaskFailed) as excinfo:
                await ch.get(timeout=3)
        assert head in str(excinfo.value)
    assert await marks.runs("after") == 0


# -- chains --------------------------------------------------------------------------------------


async def test_chain_seed_example_gives_48(app: Server) -> None:
    chain = Chain(add_sig(1, 1), add_sig(5, 5), Signature("multiply", args=[Arg("int64", 4)]))
    async with running_worker(app, 10):
        ch = await app.send_chain(chain)
        assert await ch.get(timeout=10) == 48
        # each result is appended to the NEXT link's args: add(5, 5, 2) = 12, multiply(4, 12)
        assert [await r.get(timeout=1) for r in ch.results] == [2, 12, 48]
    assert [r.task_id for r in ch.results] == [s.id for s in chain.tasks]


async def test_chain_appends_results_after_the_next_links_args(app: Server) -> None:
    chain = Chain(Signature("pair", args=[1, 2]), Signature("collect", args=["first"]))
    async with running_worker(app, 10):
        ch = await app.send_chain(chain)
        assert await ch.get(timeout=10) == ["first", 1, 2]


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        # an immutable link does not get the previous result ...
        ([add_sig(1, 1), Signature("add", args=[5, 5], immutable=True)], [2, 10]),
        # ... and an immutable task does not pass its result on
        ([Signature("add", args=[1, 1], immutable=True), add_sig(5, 5)], [2, 10]),
        # the others still do
        (
            [add_sig(1, 1), Signature("add", args=[5, 5], immutable=True), add_sig(3)],
            [2, 10, 3],
        ),
    ],
)
async def test_chain_immutable_links(
    app: Server, links: Sequence[Signature], expected: list[int]
) -> None:
    fresh = [s.copy() for s in links]
    async with running_worker(app, 10):
        ch = await app.send_chain(Chain(*fresh))
        assert [await r.get(timeout=10) for r in ch.results] == expected


async def test_chain_stops_at_the_first_failure(
    app: Server, rc_text: aioredis.Redis, marks: Marks
) -> None:
    failing = Signature("fail", args=["link broke"], on_error=[Signature("on_error", args=["ctx"])])
    chain = Chain(
        add_sig(1, 1),
        failing,
        Signature("mark", args=["after-1"]),
        Signature("mark", args=["after-2"]),
    )
    async with running_worker(app, 10):
        ch = await app.send_chain(chain)
        started = time.monotonic()
        with pytest.raises(TaskFailed) as excinfo:
            await ch.get(timeout=10)
        assert time.monotonic() - started < 3.0, "the failure must be reported, not time out"
        message = str(excinfo.value)
        assert f"'fail' ({failing.id})" in message
        assert "link broke" in message
        with pytest.raises(TaskFailed, match="link broke"):
            await ch.results[1].get(timeout=1)
        assert await ch.results[0].get(timeout=1) == 2

        # the failing link's on_error callback ran, with the error string first
        async def errors() -> list[Any]:
            return await marks.list("errors")

        (err,) = await eventually(errors)
        assert err == ["RuntimeError: link broke", "ctx"]
        await wait_idle(rc_text, app)
    assert await marks.runs("fail") == 1
    assert await marks.runs("after-1") == 0
    assert await marks.runs("after-2") == 0
    for later in ch.results[2:]:
        state = await later.get_state()
        assert state is not None
        assert state.state is State.FAILURE
        assert f"chain stopped: task 'fail' ({failing.id}) failed" in state.error
